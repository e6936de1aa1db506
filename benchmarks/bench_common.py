"""Shared pieces of the benchmarks (benchmarks/run.py): the registry of measurements
and the timing and set-up helpers they use.

A measurement is `fn(results, quick) -> dict of numbers`, registered with
`@measurement(name)`; it may read earlier results (e.g. MFU needs the matmul peak).
Ratios are measured within one run with the variants interleaved and the best of
several repeats taken, so load from other processes on the machine mostly cancels out.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASUREMENTS: dict[str, Callable[..., dict]] = {}
# `--quick` model width (smoke test only).
QUICK_MODEL = {"d_model": 32, "n_heads": 2, "head_dim": 16, "d_ff": 64, "value_hidden": 32}
# Remat policy of the timed updates (train step, hydra): the fastest setting here. Without
# remat, XLA:CPU's scan over the layers stacks every layer's residuals, [B, H, L, L]
# attention tensors included, into zero-filled buffers that are written, converted and
# read back: that memory traffic costs more than recomputing each block's forward.
UPDATE_REMAT = "full"


def measurement(name: str):
    def register(fn):
        MEASUREMENTS[name] = fn
        return fn
    return register


def interleaved_best_seconds(variants: dict[str, Callable[[], object]],
                             repeats: int) -> dict[str, float]:
    """Best wall seconds of each variant: one untimed warm-up call each (compiles),
    then `repeats` rounds calling every variant once in turn (blocking on results)."""
    import jax
    for fn in variants.values():
        jax.block_until_ready(fn())
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def tiny_config(quick: bool, stage: str = "sft", **model_overrides):
    """experiments/tiny_cpu.py (f32); `quick` shrinks the model for the smoke test."""
    from sparrow_jax.config import load_experiment
    cfg = load_experiment(os.path.join(ROOT, "experiments", "tiny_cpu.py") + f":{stage}")
    if quick:
        model_overrides = {**QUICK_MODEL, **model_overrides}
    for key, value in model_overrides.items():
        setattr(cfg.model, key, value)
    return cfg


def random_tokens(rows: int, length: int, vocab_size: int, seed: int = 0):
    """int32 [rows, length] of ids >= 16 (clear of the tokenizer's control ids)."""
    import numpy as np
    rs = np.random.RandomState(seed)
    return rs.randint(16, vocab_size, (rows, length)).astype(np.int32)


def rule_suffixes():
    """The 23 packaged rules rendered as rule-RM suffixes with a tokenizer trained
    here (BPE, 1024 pieces) on the packaged rule and prompt texts: (tokens_RxQ, valid_RxQ).
    Q is the longest suffix rounded up to 16, as the rule_rm pipeline pads it."""
    import glob
    from sparrow_jax.dialogue.rules import load_rules
    from sparrow_jax.dialogue.tokenizer import train_tokenizer
    from sparrow_jax.rewards.rule_scoring import prepare_rule_suffixes
    rules = load_rules()
    texts = [rule.text for rule in rules]
    for path in sorted(glob.glob(os.path.join(ROOT, "sparrow_jax", "resources", "prompts", "*"))):
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(texts, os.path.join(tmp, "tok.model"), vocab_size=1024)
    return prepare_rule_suffixes(rules, tokenizer)


def no_eot_ids(eot_id: int = 8):
    """TokenIds that ban every control id, eot included, so every decode step runs."""
    from sparrow_jax.sampling.sampler import TokenIds
    return TokenIds(eot_id=eot_id, pad_id=0, banned_ids=tuple(range(16)))



def matmul_fn(n: int, dtype: str):
    """A jitted n x n matmul on random inputs of `dtype` (f32 accumulation): () -> array."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return lambda: matmul(a, b)


def stepper(run: list):
    """() -> metrics: one update of run = [step, state, batch, ...], keeping the new state
    (the step donates the old one)."""
    def go():
        run[1], metrics = run[0](run[1], run[2])
        return metrics
    return go

