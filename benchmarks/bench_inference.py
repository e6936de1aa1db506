"""Inference figures: scoring all rules with a shared dialogue prefix, KV-cached decoding."""
from __future__ import annotations

import functools

from bench_common import (interleaved_best_seconds, measurement, no_eot_ids, random_tokens,
                          rule_suffixes, tiny_config)


RULE_DIALOGUE_LENS = (1024, 512)  # the first is the headline figure


@measurement("rule_prefix_cost")
def rule_prefix_cost(results: dict, quick: bool = False, repeats: int = 20) -> dict:
    """rule_prefix_cost_ratio = seconds to score all 23 rules on one dialogue of
    L = 1024 tokens (dialogue encoded once, its KV cache shared by the rule suffixes:
    rewards.rule_scoring.rule_violation_probs) / seconds to score one rule the same way.

    Why L = 1024: the rule RM reads a whole dialogue, and a Sparrow dialogue with
    evidence is several turns plus ~500-character search results, several hundred to
    about a thousand tokens, in a 2048-token context [ours, docs/recipe.md section 2-3].
    The same ratio at L = 512 is reported too (`rule_prefix_cost_ratio_L512`), since
    the ratio falls as dialogues grow. Model: tiny_cpu (f32) with max_len 2048,
    Sparrow's context, so every distance has its own relative encoding. Rule suffixes:
    the packaged rules via prepare_rule_suffixes with a tokenizer trained here (BPE,
    1024 pieces; `rule_suffix_len` = padded Q; every suffix is run at Q).
    All rules are scored as the RL reward and evaluation do: `rule_chunk=1` and
    `rule_groups=group_rules_by_length(...)` (`rule_groups` groups, each at its own suffix
    width). `rule_prefix_work_floor` = (L + 23 Q) / (L + Q): the ratio if
    cost were proportional to tokens run at one width Q (every suffix token runs the
    trunk and the rule RM top, like a dialogue token); grouping runs fewer (`rule_grouped_slots`
    of 23 Q). `rule_unshared_over_shared` = seconds of scoring the 23
    rules without sharing (rule_violation_probs_unshared) / with sharing, at L = 1024.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from sparrow_jax.model import hydra
    from sparrow_jax.rewards import rule_scoring
    lengths = (48, 24) if quick else RULE_DIALOGUE_LENS
    cfg = tiny_config(quick, max_len=128 if quick else 2048)
    params = hydra.init_params(cfg.model, jax.random.PRNGKey(0), roles=("rule_rm",))
    rule_tokens, rule_valid = (jnp.asarray(x) for x in rule_suffixes())
    n_rules, q_len = rule_tokens.shape
    # As the RL reward and evaluation score them: one rule per lax.map step, rules grouped
    # by suffix length so each group runs at its own width.
    groups = rule_scoring.group_rules_by_length(np.asarray(rule_valid))
    shared = jax.jit(lambda p, t, v, rt, rv: rule_scoring.rule_violation_probs(
        p, cfg.model, t, v, rt, rv, rule_chunk=1,
        rule_groups=groups if rt.shape[0] == n_rules else None))
    unshared = jax.jit(lambda p, t, v, rt, rv: rule_scoring.rule_violation_probs_unshared(
        p, cfg.model, t, v, rt, rv))
    variants = {}
    for length in lengths:
        dialogue = jnp.asarray(random_tokens(1, length, cfg.model.vocab_size))
        valid = jnp.ones_like(dialogue, bool)
        variants[f"all_{length}"] = functools.partial(shared, params, dialogue, valid,
                                                      rule_tokens, rule_valid)
        variants[f"one_{length}"] = functools.partial(shared, params, dialogue, valid,
                                                      rule_tokens[:1], rule_valid[:1])
        if length == lengths[0]:
            unshared_fn = functools.partial(unshared, params, dialogue, valid,
                                            rule_tokens, rule_valid)
    seconds = interleaved_best_seconds(variants, repeats)
    length = lengths[0]
    # The unshared reference is ~10x slower: timed on its own, a few rounds.
    seconds.update(interleaved_best_seconds(
        {"unshared": unshared_fn, "shared": variants[f"all_{length}"]}, 3))
    out = {"rule_prefix_cost_ratio": seconds[f"all_{length}"] / seconds[f"one_{length}"],
           "rule_prefix_work_floor": (length + n_rules * q_len) / (length + q_len),
           "rule_dialogue_len": length, "rule_suffix_len": q_len,
           "rule_suffix_mean_real_tokens": float(rule_valid.sum(axis=1).mean()),
           "rule_count": n_rules, "rule_model_max_len": cfg.model.max_len,
           "rule_score_all_seconds": seconds[f"all_{length}"],
           "rule_score_one_seconds": seconds[f"one_{length}"],
           "rule_unshared_over_shared": seconds["unshared"] / seconds["shared"],
           "rule_groups": len(groups),
           "rule_grouped_slots": sum(len(i) * q for i, q in groups)}
    for other in lengths[1:]:
        out[f"rule_prefix_cost_ratio_L{other}"] = seconds[f"all_{other}"] / seconds[f"one_{other}"]
        out[f"rule_prefix_work_floor_L{other}"] = (other + n_rules * q_len) / (other + q_len)
    return out


@measurement("kv_decode")
def kv_decode(results: dict, quick: bool = False, repeats: int = 2) -> dict:
    """kv_decode_speedup = decode tokens/s of sampler.sample (prefill + KV-cached decode)
    / tokens/s of sampler.sample_uncached (a full forward over [B, P + N] every step).

    Tiny_cpu model, batch 8, prompt 16 tokens, N = 256 new tokens, temperature 1,
    eot banned so every row runs all N steps. Tokens/s = B * N / seconds of the call.
    """
    import jax
    import jax.numpy as jnp
    from sparrow_jax.model import hydra
    from sparrow_jax.sampling import sampler
    cfg = tiny_config(quick)
    batch, prompt_len, new_tokens = (2, 4, 8) if quick else (8, 16, 256)
    params = hydra.init_params(cfg.model, jax.random.PRNGKey(0), roles=("policy",))
    prompt = jnp.asarray(random_tokens(batch, prompt_len, cfg.model.vocab_size))
    valid = jnp.ones_like(prompt, bool)
    config = sampler.SamplingConfig(max_new_tokens=new_tokens, temperature=1.0)
    ids, rng = no_eot_ids(), jax.random.PRNGKey(1)
    seconds = interleaved_best_seconds({
        "cached": lambda: sampler.sample(params, cfg.model, prompt, valid, rng, config, ids),
        "uncached": lambda: sampler.sample_uncached(params, cfg.model, prompt, valid, rng,
                                                    config, ids),
    }, repeats)
    tokens = batch * new_tokens
    return {"kv_decode_speedup": seconds["uncached"] / seconds["cached"],
            "kv_decode_tokens_per_second": tokens / seconds["cached"],
            "uncached_decode_tokens_per_second": tokens / seconds["uncached"],
            "decode_batch_size": batch, "decode_prompt_len": prompt_len,
            "decode_new_tokens": new_tokens}


# A small toy world for the RL loop (`sparrow data toyworld --set ...`): enough prompts
