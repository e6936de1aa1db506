"""`sparrow aot` steps of an RL step outside its update: the sampler and the rule scorer.

    sample:      prefill + decode loop of one agent turn (`sampler.sample`): B = the
                 episodes of one RL step (train.batch_size), prompts of rl.max_prompt_len,
                 rl.max_new_tokens new tokens, params in the decode layout
                 (`sampling.layout`) and, for comparison, in the training layout.
    rule_score:  the rule RM over every rule of the rules file, dialogue prefix shared
                 (`rule_violation_probs` as `rl.reward_models.RewardScorer` calls it), at the RL
                 sequence length, with rl.rule_chunk and the trainer's rule groups.

Abstract like the update steps: ShapeDtypeStructs carrying NamedShardings. The RL train
state stays on the devices while these run, so each total adds `resident`: the state's
bytes per device that are not already arguments of the program.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sparrow_jax import sharding as shd
from sparrow_jax.config import HBM_BUDGET_GIB
from sparrow_jax.dialogue.render import DEFAULT_RULE_QUESTION
from sparrow_jax.dialogue.rules import load_rules
from sparrow_jax.hlo_collectives import collective_bytes
from sparrow_jax.model import hydra
from sparrow_jax.rewards.rule_scoring import group_rules_by_length, rule_violation_probs
from sparrow_jax.rl.lengths import estimate_tokens, sequence_length
from sparrow_jax.rl.projection import aot_projection_dtype, inference_spec
from sparrow_jax.rl.rollout import RolloutConfig
from sparrow_jax.sampling import layout, sampler
from sparrow_jax.sampling.sampler import TokenIds
from sparrow_jax.train.trainable import merge_params

# A trained tokenizer's ids (dialogue/tokenizer.py): pad 0, bos 1, eos 2, roles 4-7, eot 8,
# rule 9. The sampler bans every control id but eot.
AOT_TOKEN_IDS = TokenIds(eot_id=8, pad_id=0, banned_ids=(0, 1, 2, 4, 5, 6, 7, 9))
RULE_SUFFIX_MULTIPLE = 16  # as prepare_rule_suffixes pads Q


def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (or arrays)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def memory_report(compiled, hbm: str, resident: int = 0) -> dict[str, Any]:
    """Per-device bytes of a compiled program, plus `resident` bytes held alongside it."""
    mem = compiled.memory_analysis()
    args, temps = int(mem.argument_size_in_bytes), int(mem.temp_size_in_bytes)
    outs, alias = int(mem.output_size_in_bytes), int(mem.alias_size_in_bytes)
    total = args + temps + outs - alias + resident  # donated state: outputs alias the arguments
    budget = HBM_BUDGET_GIB[hbm] * 2**30
    return {"per_device_bytes": {"arguments": args, "temporaries": temps, "outputs": outs,
                                 "aliased": alias, "resident": resident, "total": total},
            "hbm": hbm, "hbm_budget_bytes": budget, "fits": total <= budget}


def _forward_flops(model_cfg, parts: dict[str, int], tokens: int, attn_pairs: int,
                   n_layers: int) -> float:
    """2 N T over `parts` (the embedding lookup is not a matmul) + 4 H K per (query, key)
    pair per layer: scores and weighted sum."""
    m = model_cfg
    n = sum(parts.values()) - m.vocab_size * m.d_model
    if m.tied_embeddings:
        n += m.vocab_size * m.d_model
    return 2.0 * n * tokens + 4.0 * attn_pairs * m.n_heads * m.head_dim * n_layers


def _lm_parts(model_cfg, roles) -> dict[str, int]:
    shapes = jax.eval_shape(lambda r: hydra.init_params(model_cfg, r, roles=roles),
                            jax.random.PRNGKey(0))
    return {k: hydra.count_params(shapes[k]) for k in ("trunk",) + tuple(roles)}


def _batch_inputs(mesh, rules, batch: int, length: int):
    sharding = NamedSharding(mesh, shd.batch_spec(2, rules))
    return (jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=sharding),
            jax.ShapeDtypeStruct((batch, length), jnp.bool_, sharding=sharding))


def _replicated(mesh, shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P()))


def _compile_sample_in(cfg, mesh, rules, resident_state) -> dict[str, Any]:
    """Compile `sampler.sample`'s program with params and activations laid out by `rules`."""
    t0 = time.time()
    r, batch = cfg.rl, cfg.train.batch_size
    shapes = layout.decode_param_shapes(cfg.model)
    params = shd.abstract_with_shardings(
        shapes, layout.decode_param_shardings(cfg, mesh, rules=rules))
    tokens, valid = _batch_inputs(mesh, rules, batch, r.max_prompt_len)
    config = RolloutConfig.from_rl_config(r).agent
    with shd.activation_sharding(mesh, rules):
        # sampler.sample minus its host-side prompt checks and device_put
        lowered = sampler._sample_cached.lower(
            params, tokens, valid, _replicated(mesh, (2,), jnp.uint32),
            *(jax.ShapeDtypeStruct((batch,), dtype, sharding=NamedSharding(
                mesh, P(tokens.sharding.spec[0]))) for dtype in (jnp.bool_, jnp.int32)),
            spec=inference_spec(cfg, aot_projection_dtype(cfg)), config=config, ids=AOT_TOKEN_IDS,
            sharding_key=(mesh, rules))
    compiled = lowered.compile()
    # Parameters the state already holds (the training layout) are not counted twice.
    same = rules == shd.rules_from_config(cfg.mesh)
    resident = device_bytes(resident_state) - (device_bytes(params) if same else 0)
    traffic = collective_bytes(compiled.as_text())
    return {**memory_report(compiled, cfg.mesh.hbm, resident),
            "rules": [list(rule) for rule in rules],
            "collectives": {"bytes_per_decode_step": traffic["loop"]["bytes"],
                            "bytes_outside_loop": traffic["outside"]["bytes"],
                            "loop_found": traffic["loop_found"],
                            "loop": traffic["loop"], "outside": traffic["outside"]},
            "compile_seconds": round(time.time() - t0, 1)}


def compile_sample(cfg, mesh, rl_state) -> dict[str, Any]:
    """The `sample` step: decode layout first; the training layout's numbers beside it.

    rl_state: the RL TrainState (abstract, sharded), resident while sampling.
    """
    r, batch = cfg.rl, cfg.train.batch_size
    decode = layout.decode_rules(cfg.mesh)
    training = shd.rules_from_config(cfg.mesh)
    chosen = _compile_sample_in(cfg, mesh, decode, rl_state)
    compare = chosen if decode == training else _compile_sample_in(cfg, mesh, training, rl_state)
    prompt, new = r.max_prompt_len, r.max_new_tokens
    # Prefill: the causal square of the prompt; decode: step i reads prompt + i keys.
    pairs = batch * (prompt * (prompt + 1) // 2 + new * prompt + new * (new + 1) // 2)
    flops = _forward_flops(cfg.model, _lm_parts(cfg.model, ("policy",)), batch * (prompt + new),
                           pairs, cfg.model.n_layers)
    return {**{k: v for k, v in chosen.items() if k != "compile_seconds"},
            "layout": "training" if decode == training else "decode",
            "training_layout": {k: compare[k] for k in ("per_device_bytes", "fits", "collectives")},
            "trainable_params": 0,
            "flops_per_step": flops,
            "batch": {"tokens_BxP": [batch, prompt], "new_tokens": new},
            "compile_seconds": round(chosen["compile_seconds"]
                                     + (compare["compile_seconds"] if compare is not chosen else 0), 1)}


def estimated_rule_suffixes(rule_texts, question: str = DEFAULT_RULE_QUESTION):
    """rule_valid_RxQ as `prepare_rule_suffixes` would make it, by the tokenizer-free
    estimate: [rule] " " + text + "\\n" + question [eot], Q padded to a multiple of 16."""
    lengths = [2 + estimate_tokens(f" {t}\n{question}") for t in rule_texts]
    q_len = -(-max(lengths) // RULE_SUFFIX_MULTIPLE) * RULE_SUFFIX_MULTIPLE
    return np.arange(q_len)[None, :] < np.asarray(lengths)[:, None]


def compile_rule_score(cfg, mesh, rl_state) -> dict[str, Any]:
    """The `rule_score` step: every rule of cfg.data.rules (default the packaged ones)."""
    t0 = time.time()
    rules = shd.rules_from_config(cfg.mesh)
    batch, length = cfg.train.batch_size, sequence_length(cfg)
    texts = [rule.text for rule in load_rules(cfg.data.rules or None)]
    valid_RxQ = estimated_rule_suffixes(texts)
    groups = group_rules_by_length(valid_RxQ)
    # rl.rule_chunk=-1 is measured when the run starts; its smallest candidate is compiled here.
    rule_chunk = max(int(cfg.rl.rule_chunk), 1) if int(cfg.rl.rule_chunk) else None
    full = merge_params(rl_state.params, rl_state.frozen)
    params = {k: full[k] for k in ("trunk", "rule_rm")}
    tokens, valid = _batch_inputs(mesh, rules, batch, length)
    model_cfg = inference_spec(cfg, aot_projection_dtype(cfg))
    fn = jax.jit(lambda p, t, v, rt, rv: rule_violation_probs(
        p, model_cfg, t, v, rt, rv, rule_chunk=rule_chunk, rule_groups=groups, mesh=mesh,
        rules=rules, return_trunk=True))
    compiled = fn.lower(params, tokens, valid, _replicated(mesh, valid_RxQ.shape, jnp.int32),
                        _replicated(mesh, valid_RxQ.shape, jnp.bool_)).compile()
    resident = device_bytes(rl_state) - device_bytes(params)
    n_rules = len(texts)
    suffix_slots = sum(len(indices) * q for indices, q in groups)
    rule_rows = batch * suffix_slots
    # Prefill over the dialogue, then each (dialogue, rule) suffix over the cache.
    pairs = batch * length * (length + 1) // 2 + sum(
        batch * len(indices) * (q * length + q * (q + 1) // 2) for indices, q in groups)
    flops = _forward_flops(cfg.model, _lm_parts(cfg.model, ("rule_rm",)),
                           batch * length + rule_rows, pairs, cfg.model.n_layers)
    return {**memory_report(compiled, cfg.mesh.hbm, resident),
            "trainable_params": 0,
            "flops_per_step": flops,
            "batch": {"tokens_BxL": [batch, length], "rules": n_rules,
                      "rule_groups": [[len(indices), q] for indices, q in groups],
                      "rule_chunk": rule_chunk or n_rules},
            "compile_seconds": round(time.time() - t0, 1)}
