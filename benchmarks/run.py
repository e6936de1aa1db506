"""Speed measurements on this machine (not tests).

    python benchmarks/run.py [--json] [--quick] [--only name,name]

A registry of named measurements (bench_common.py; the figures are in bench_training.py,
bench_inference.py and bench_rl.py); each is `fn(results, quick) -> dict of numbers`
and may read earlier results (e.g. MFU needs the matmul peak). `--json` prints
one object merging every measurement's keys; `--quick` runs toy sizes (smoke
test only: the figures are meaningless). Ratios are measured within one run
with the variants interleaved and the best of several repeats taken, so load
from other processes on the machine mostly cancels out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_inference  # noqa: E402,F401  (registers rule_prefix_cost, kv_decode)
import bench_rl  # noqa: E402,F401  (registers rl_episodes)
import bench_training  # noqa: E402,F401  (registers matmul_peak, train_step, hydra_cost)
from bench_common import MEASUREMENTS, ROOT  # noqa: E402

# Registry order is run order; MFU reads the matmul peak measured first.
ORDER = ("matmul_peak", "train_step", "hydra_cost", "rule_prefix_cost", "kv_decode",
         "rl_episodes")


# ---------------------------------------------------------------------------- entry point

def run(names=None, quick: bool = False) -> dict:
    """Run the named measurements (default all, in ORDER); merged results."""
    results: dict = {}
    for name in names or ORDER:
        results.update(MEASUREMENTS[name](results, quick=quick))
    return results


def format_table(results: dict) -> str:
    width = max(len(k) for k in results)
    lines = []
    for key, value in results.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key:{width}s}  {text}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="toy sizes (smoke test)")
    parser.add_argument("--only", default="", help="comma-separated measurement names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(ORDER)
    unknown = set(names) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurements {sorted(unknown)}; have {list(MEASUREMENTS)}")
    results = run(names, quick=args.quick)
    print(json.dumps(results) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    from sparrow_jax import host_memory
    host_memory.reuse_freed_memory()  # as the `sparrow` command does, before JAX starts
    sys.exit(main())

