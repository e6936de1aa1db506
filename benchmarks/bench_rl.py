"""RL figure: episodes per second of the real RL loop (sparrow_jax.rl.trainer.train_rl)."""
from __future__ import annotations

import os
import sys
import tempfile

from bench_common import QUICK_MODEL, measurement


# that the 16-episode batches do not repeat, small enough to generate in seconds.
RL_WORLD = ("n_entities=48", "n_heldout=8", "n_unfamiliar=0", "n_dialogues=240",
            "n_preferences=120", "n_rule_ratings=160", "n_prompts=200")
RL_QUICK_WORLD = ("n_entities=24", "n_heldout=6", "n_unfamiliar=0", "n_dialogues=120",
                  "n_preferences=60", "n_rule_ratings=80", "n_prompts=40")
RL_STEPS = 6  # timed: steps 2..RL_STEPS


def _rl_loop_metrics(quick: bool, rl_steps: int) -> tuple[list[dict], object, object]:
    """Run the real tiny-config recipe in a temporary directory: a toy world, then lm,
    sft, pref_rm and rule_rm for 2 steps each (wired as `sparrow demo` wires them), then
    `train_rl` for `rl_steps` steps logging every step, under a syncing PhaseClock.
    Returns (the rl stage's metrics.jsonl records, its config, the clock). Progress
    output goes to stderr."""
    import contextlib
    from sparrow_jax import demo
    from sparrow_jax.rl import phases
    from sparrow_jax.rl.trainer import train_rl
    from sparrow_jax.train.loop import train_stage
    from sparrow_jax.train.metrics import read_metrics
    model = [f"--config.model.{k}={v}" for k, v in QUICK_MODEL.items()] if quick else []
    overrides = ["--config.train.steps=2", "--config.rl.normaliser_batches=1"] + model
    if quick:
        overrides += ["--config.train.batch_size=4", "--config.rl.max_new_tokens=8",
                      "--config.train.eval_batches=1"]
    settings = demo.DemoSettings(overrides=tuple(overrides),
                                 world_settings=RL_QUICK_WORLD if quick else RL_WORLD)
    rl_settings = demo.DemoSettings(
        overrides=tuple(overrides + [f"--config.train.steps={rl_steps}",
                                     "--config.train.log_every=1"]),
        world_settings=settings.world_settings)
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(sys.stderr):
        demo.make_world(root, settings)
        for stage in ("lm", "sft", "pref_rm", "rule_rm"):
            train_stage(demo.stage_config(root, stage, settings), demo.stage_dir(root, stage))
        cfg = demo.stage_config(root, "rl", rl_settings)
        # Syncing costs no overlap here: every phase but the update already waits for its
        # results on the host, and the next step's sampling needs the update's params.
        with phases.timing(phases.PhaseClock(sync=True)) as clock:
            train_rl(cfg, demo.stage_dir(root, "rl"))
        records = read_metrics(os.path.join(demo.stage_dir(root, "rl"), "logs"), "train")
    return records, cfg, clock


def _sampler_seconds(cfg, new_tokens: int, repeats: int = 10, width: int = 0) -> float:
    """Best wall seconds of one `sampler.sample` call at the RL step's shape (batch, prompt
    width `width`, default rl.max_prompt_len) with `new_tokens` tokens drawn for every row (eot
    banned), random params."""
    import jax
    import numpy as np
    from sparrow_jax.model import hydra
    from sparrow_jax.sampling import sampler
    from bench_common import interleaved_best_seconds
    batch, width = cfg.train.batch_size, width or cfg.rl.max_prompt_len
    params = hydra.init_params(cfg.model, jax.random.PRNGKey(0), roles=("policy",))
    rng = np.random.default_rng(0)
    tokens = rng.integers(8, cfg.model.vocab_size - 8, (batch, width)).astype(np.int32)
    valid = np.ones((batch, width), bool)
    eot = cfg.model.vocab_size - 1
    ids = sampler.TokenIds(eot_id=eot, pad_id=0, banned_ids=(eot,))
    config = sampler.SamplingConfig(max_new_tokens=new_tokens, temperature=float(cfg.rl.temperature))
    return interleaved_best_seconds({"call": lambda: sampler.sample(
        params, cfg.model, tokens, valid, jax.random.PRNGKey(1), config, ids)}, repeats)["call"]


PHASES = ("prefill", "decode", "search", "rule_scoring", "update", "host_other")


@measurement("rl_episodes")
def rl_episodes(results: dict, quick: bool = False, repeats: int = 0) -> dict:
    """rl_episodes_per_second of the real RL loop (sparrow_jax.rl.trainer.train_rl) with
    experiments/tiny_cpu.py:rl, on a small generated toy world (RL_WORLD) whose stages
    trained 2 steps each (wired as `sparrow demo` wires them; Elo normaliser from one
    batch). An RL step is: self-play of 16 episodes (prompt mixture or context buffer,
    one agent turn each, sampled with the KV cache, searching when the agent asks),
    rule-RM scoring of the rules of `rl.rule_scope` with the shared dialogue prefix, and
    the jitted A2C update (policy, value, teacher and preference RM on the trunk output
    of the rule RM's prefill).

    From the trainer's own metrics (every step logged): its `episodes_per_second` at
    step k is episodes so far / seconds since train_rl started, so seconds up to step k
    = episodes_k / episodes_per_second_k. The figure is episodes / seconds over steps 2
    to RL_STEPS, which leaves out set-up, the normaliser's rollouts and step 1 (where
    the sampler, the rule scorer and the update compile). `rl_rollout_fraction`: share
    of those seconds spent in rollouts and host rewards (the trainer's
    `rollout_fraction`, same differencing). With 2-step stages the policy is untrained:
    `rl_agent_turn_tokens` and `rl_search_rate` (means over the timed steps) say what
    its turns were like; a trained policy's turns end earlier and search more.

    Phases (`_phase_figures`, from a `rl.phases.PhaseClock` over the same steps):
    `rl_phase_<name>_seconds` / `_share` for prefill, decode, search, rule_scoring (its
    dialogue prefill also runs the trunk the update reads), update (which also computes
    the preference RM's Elo) and host_other (the rest of the step: prompt drawing,
    tokenising, sequence assembly, bookkeeping);
    `rl_generated_tokens_per_second` (kept sampled tokens per second of self-play) and
    `rl_rollout_efficiency` = that / `bare_sampler_tokens_per_second`.
    """
    del repeats
    rl_steps = 3 if quick else RL_STEPS
    records, cfg, clock = _rl_loop_metrics(quick, rl_steps)
    by_step = {int(r["step"]): r for r in records}
    batch = cfg.train.batch_size

    def elapsed(step):  # seconds since train_rl started, at the end of `step`
        return step * batch / by_step[step]["episodes_per_second"]

    first, last = 1, rl_steps
    seconds = elapsed(last) - elapsed(first)
    rollout = (by_step[last]["rollout_fraction"] * elapsed(last)
               - by_step[first]["rollout_fraction"] * elapsed(first))
    timed = [by_step[k] for k in range(first + 1, last + 1)]
    mean = lambda key: sum(r[key] for r in timed) / len(timed)  # noqa: E731
    out = {"rl_episodes_per_second": (last - first) * batch / seconds,
           "rl_step_seconds": seconds / (last - first),
           "rl_rollout_fraction": rollout / seconds, "rl_episode_batch": batch,
           "rl_timed_steps": last - first, "rl_max_new_tokens": cfg.rl.max_new_tokens,
           "rl_agent_turn_tokens": mean("agent_turn_tokens"),
           "rl_search_rate": mean("search_rate") + 0.0}
    return {**out, **_phase_figures(cfg, clock, first, last)}


def _phase_figures(cfg, clock, first: int, last: int) -> dict:
    """Seconds per step and share of each phase over steps first+1..last (PHASES: prefill
    and decode split the sampler calls' time by a prefill-only call of the whole batch at
    each call's prompt width (`rl.prompt_buckets`), an upper bound on the prefill: a call of
    the live rows only prefills half the batch), the
    kept tokens the rollouts generated per second of self-play, and that over the bare
    sampler's tokens/s at the same batch and width (`rl_rollout_efficiency`)."""
    (sec0, cnt0), (sec1, cnt1) = clock.history[first - 1], clock.history[last - 1]
    steps = last - first
    delta = lambda d1, d0, k: (d1.get(k, 0) - d0.get(k, 0))  # noqa: E731
    per_step = {k: delta(sec1, sec0, k) / steps for k in sec1}
    calls = delta(cnt1, cnt0, "sampler_calls") / steps
    new_tokens = cfg.rl.max_new_tokens
    at_width = "sampler_calls_at_width_"
    prefill = sum(delta(cnt1, cnt0, key) / steps
                  * _sampler_seconds(cfg, 1, width=int(key[len(at_width):]))
                  for key in cnt1 if key.startswith(at_width))
    bare_call = _sampler_seconds(cfg, new_tokens)
    phase = {"prefill": min(prefill, per_step.get("sample", 0.0))}
    phase["decode"] = per_step.get("sample", 0.0) - phase["prefill"]
    for name in ("search", "rule_scoring", "update"):
        phase[name] = per_step.get(name, 0.0)
    phase["host_other"] = per_step["step"] - sum(phase.values())
    out = {}
    for name in PHASES:
        out[f"rl_phase_{name}_seconds"] = phase[name]
        out[f"rl_phase_{name}_share"] = phase[name] / per_step["step"]
    generated = delta(cnt1, cnt0, "generated_tokens") / steps
    tokens_per_second = generated / per_step["play"]
    bare = cfg.train.batch_size * new_tokens / bare_call
    out.update({"rl_sampler_calls_per_step": calls, "rl_generated_tokens_per_step": generated,
                "rl_generated_tokens_per_second": tokens_per_second,
                "bare_sampler_tokens_per_second": bare,
                "rl_rollout_efficiency": tokens_per_second / bare})
    return out
