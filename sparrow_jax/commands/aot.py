"""`sparrow aot --config experiments/sparrow_70b.py [--json] [--steps sft,rl] [--layers N]`.

Compiles the update steps, the RL sampler and the rule scorer for the config's mesh on
simulated CPU devices and reports per-device memory, FLOPs and the sampler's collective
traffic. JAX is imported only inside `run`, after the simulated device count is set; if
JAX was already initialised with another device count, the command re-runs itself in a
subprocess.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment file[:variant]")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--steps", default="sft,pref_rm,rule_rm,rl,sample,rule_score",
                        help="comma-separated steps to compile: the updates sft, pref_rm, "
                             "rule_rm, rl; sample (the RL sampler) and rule_score (the rule "
                             "RM over every rule)")
    parser.add_argument("--layers", type=int, default=None,
                        help="override model depth (keeps the frozen fraction) for quick checks")
    parser.add_argument("--devices", type=int, default=None,
                        help="simulated devices (default: mesh.aot_num_devices)")


def _set_device_count_flag(n: int) -> None:
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


def _jax_ready_with(n: int) -> bool | None:
    """True: JAX can give n CPU devices here. None: it was initialised otherwise."""
    _set_device_count_flag(n)
    import jax
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        devices = jax.devices()
        return True if len(devices) >= n and devices[0].platform == "cpu" else None
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)
    return True


def _reexec(args, overrides, n: int) -> int:
    argv = [sys.executable, "-m", "sparrow_jax", "aot", "--config", args.config,
            "--steps", args.steps, "--devices", str(n)]
    if args.json:
        argv.append("--json")
    if args.layers is not None:
        argv += ["--layers", str(args.layers)]
    env = dict(os.environ)
    _set_device_count_flag(n)
    env["XLA_FLAGS"], env["JAX_PLATFORMS"] = os.environ["XLA_FLAGS"], "cpu"
    return subprocess.run(argv + list(overrides), env=env).returncode


def run(args, overrides) -> int:
    from sparrow_jax.config import apply_overrides, load_experiment
    cfg = apply_overrides(load_experiment(args.config), overrides)
    n = args.devices or cfg.mesh.aot_num_devices
    if n and _jax_ready_with(n) is None:
        return _reexec(args, overrides, n)
    from sparrow_jax import aot
    steps = [s for s in args.steps.split(",") if s]
    report = aot.run_aot(cfg, steps=steps, layers=args.layers, num_devices=n or None)
    if args.json:
        print(json.dumps(report))
    else:
        print(aot.format_report(report))
    return 0
