"""How far bf16 projection inputs (`rl.projection_dtype=bfloat16`) move a trained checkpoint.

    python benchmarks/projection_gap.py --workdir ROOT/rl [--batches 4]

On the sft test split's dialogues (the world of the checkpoint's config), runs the policy, the
preference RM and the rule RM of the checkpoint twice: weight projections in float32 (the
update's arithmetic) and with bf16 inputs (the RL stage's rollouts and reward scoring). Reports,
as JSON, over the agent tokens the sft loss covers:
  policy_kl_mean / _max: KL(p_bf16 || p_f32) per token, nats (what bf16 rollouts draw from,
    against the policy the update differentiates);
  policy_abs_logp_diff_mean: |log p_bf16(next) - log p_f32(next)| of the dialogue's own token;
  policy_argmax_agreement: share of tokens whose most likely next token is the same;
and, per dialogue, elo_abs_diff_over_std (the pref RM's score at the last token, over the
spread of those scores) and p_broken_abs_diff_mean / _max (the rule RM, every scored rule).
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np


def measure(workdir: str, batches: int = 4) -> dict:
    """The report of the module docstring for `workdir`'s checkpoint, over `batches` batches."""
    from sparrow_jax.evaluation.agent import load_agent
    from sparrow_jax.model import hydra
    from sparrow_jax.model.spec import ModelSpec
    from sparrow_jax.rewards.rule_scoring import prepare_rule_suffixes, rule_violation_probs
    from sparrow_jax.train import stage_data

    agent = load_agent(workdir)
    f32 = ModelSpec.of(agent.model_cfg)
    specs = {"f32": f32, "bf16": f32.with_projection_dtype("bfloat16")}
    if specs["bf16"] == f32:
        raise SystemExit(f"{workdir}: model.compute_dtype is {f32.compute_dtype}; "
                         "bf16 projection inputs change nothing")
    rule_tokens, rule_valid = prepare_rule_suffixes(agent.rules, agent.tokenizer)
    roles = ("policy",) + (("pref_rm",) if agent.has_pref_rm else ())

    def run(spec, batch):
        out = hydra.forward(agent.params, spec, batch["tokens_BxL"], batch["positions_BxL"],
                            batch["valid_BxL"], batch["segment_ids_BxL"], roles=roles)
        if agent.has_rule_rm:
            out["p_broken"] = rule_violation_probs(agent.params, spec, batch["tokens_BxL"],
                                                   batch["valid_BxL"], rule_tokens, rule_valid,
                                                   batch["positions_BxL"])
        return out
    runs = {name: jax.jit(lambda b, s=spec: run(s, b)) for name, spec in specs.items()}

    kl, logp_diff, agree, elo, p_diff = [], [], [], {"f32": [], "bf16": []}, []
    for batch, n in stage_data.eval_batches(agent.cfg, "sft", agent.tokenizer, batches):
        batch = {k: jnp.asarray(v[:n]) for k, v in batch.items()}
        outs = {name: jax.device_get(fn(batch)) for name, fn in runs.items()}
        mask = np.asarray(batch["loss_mask_BxL"])[:, 1:]
        nxt = np.asarray(batch["tokens_BxL"])[:, 1:]
        logp = {k: jax.nn.log_softmax(o["policy"][:, :-1].astype(np.float32), -1)
                for k, o in outs.items()}
        lb, lf = np.asarray(logp["bf16"]), np.asarray(logp["f32"])
        kl.append(np.sum(np.exp(lb) * (lb - lf), -1)[mask])
        pick = lambda lp: np.take_along_axis(lp, nxt[..., None], -1)[..., 0]  # noqa: E731
        logp_diff.append(np.abs(pick(lb) - pick(lf))[mask])
        agree.append((lb.argmax(-1) == lf.argmax(-1))[mask])
        seg, valid = np.asarray(batch["segment_ids_BxL"]), np.asarray(batch["valid_BxL"])
        one_dialogue = (np.where(valid, seg, seg.min()).max(1)
                        == np.where(valid, seg, seg.max()).min(1))  # unpacked rows
        last = np.asarray(batch["valid_BxL"]).sum(1) - 1
        if agent.has_pref_rm:
            for k, o in outs.items():
                elo[k].append(np.asarray(o["pref_rm"])[np.arange(n), last][one_dialogue])
        if agent.has_rule_rm:
            p_diff.append(np.abs(outs["bf16"]["p_broken"] - outs["f32"]["p_broken"])[one_dialogue])
    kl, logp_diff, agree = (np.concatenate(a) for a in (kl, logp_diff, agree))
    report = {"workdir": workdir, "tokens": int(kl.size),
              "policy_kl_mean": float(kl.mean()), "policy_kl_max": float(kl.max()),
              "policy_abs_logp_diff_mean": float(logp_diff.mean()),
              "policy_argmax_agreement": float(agree.mean())}
    if agent.has_pref_rm:
        e32, e16 = np.concatenate(elo["f32"]), np.concatenate(elo["bf16"])
        report.update(dialogues=int(e32.size),
                      elo_abs_diff_over_std=float(np.abs(e16 - e32).mean() / e32.std()))
    if agent.has_rule_rm:
        p = np.concatenate(p_diff)
        report.update(p_broken_abs_diff_mean=float(p.mean()), p_broken_abs_diff_max=float(p.max()))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="an rl (or sft with RMs) workdir")
    parser.add_argument("--batches", type=int, default=4, help="sft test batches to read")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.workdir, args.batches), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
