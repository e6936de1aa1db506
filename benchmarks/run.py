"""Speed measurements on this machine (not tests).

    python benchmarks/run.py [--json] [--only name,name]

A registry of named measurements; each returns a dict of numbers and may read
earlier results (e.g. MFU needs the matmul peak). `--json` prints one object
merging every measurement's keys.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASUREMENTS: dict[str, Callable[[dict], dict]] = {}


def measurement(name: str):
    def register(fn):
        MEASUREMENTS[name] = fn
        return fn
    return register


def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@measurement("matmul_peak")
def matmul_peak(results: dict, n: int = 4096, repeats: int = 3) -> dict:
    """Best-of-`repeats` f32 n x n matmul, jitted; FLOP/s = 2 n^3 / seconds."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    seconds = _best_seconds(lambda: matmul(a, b).block_until_ready(), repeats)
    return {"matmul_peak_flops": 2.0 * n**3 / seconds, "matmul_size": n}


@measurement("train_step")
def train_step(results: dict, steps: int = 5) -> dict:
    """Tokens/s of the tiny config's SFT update on 1 device, and MFU vs the matmul peak."""
    import jax
    from sparrow_jax import sharding as shd
    from sparrow_jax.aot import analytic_flops
    from sparrow_jax.config import load_experiment
    from sparrow_jax.train import stages

    cfg = load_experiment(os.path.join(ROOT, "experiments", "tiny_cpu.py") + ":sft")
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    setup = stages.build_stage(cfg, mesh, "sft", log_unsharded=False)
    state = setup.init_fn(jax.random.PRNGKey(0))
    batch_np = stages.example_batch("sft", cfg.train.batch_size, cfg.train.seq_len,
                                    cfg.model.vocab_size)
    batch = jax.device_put(batch_np, jax.devices()[0])
    state, metrics = setup.step(state, batch)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = setup.step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / steps
    tokens = cfg.train.batch_size * cfg.train.seq_len
    flops = analytic_flops(cfg.model, "sft", cfg.train.batch_size, cfg.train.seq_len)
    out = {"train_tokens_per_second": tokens / seconds, "train_step_seconds": seconds,
           "train_model_flops_per_step": flops}
    peak = results.get("matmul_peak_flops")
    if peak:
        out["mfu_vs_matmul_peak"] = flops / seconds / peak
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated measurement names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(MEASUREMENTS)
    unknown = set(names) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurements {sorted(unknown)}; have {list(MEASUREMENTS)}")
    results: dict = {}
    for name in names:
        results.update(MEASUREMENTS[name](results))
    if args.json:
        print(json.dumps(results))
    else:
        width = max(len(k) for k in results)
        for key, value in results.items():
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            print(f"{key:{width}s}  {text}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
