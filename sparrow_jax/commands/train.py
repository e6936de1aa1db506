"""`sparrow train --config experiments/X.py[:variant] --workdir DIR [--config.a.b=v ...]`.

Trains one stage (`train.stage`, or the variant's). Rerunning the same command
resumes from the newest usable checkpoint in DIR. Exit codes: 0 done; 1 training
failed (e.g. repeated non-finite losses); 2 bad config, data or checkpoint;
143 preempted by SIGTERM after saving a checkpoint.
"""
from __future__ import annotations

import logging


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment file[:variant]")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs and summary go here")
    parser.add_argument("--max-steps-this-run", type=int, default=0,
                        help="stop with a checkpoint after this many steps (0 = run to the end)")


def run(args, overrides) -> int:
    from sparrow_jax import distributed
    from sparrow_jax.config import apply_overrides, load_experiment, validate
    cfg = apply_overrides(load_experiment(args.config), overrides)
    validate(cfg, training=True)  # what only training refuses (off-policy rl sampling), up front
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Before any import that might touch a device: a pod's processes must join first.
    distributed.initialize(cfg.distributed)
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from sparrow_jax import host_memory
    if host_memory.applied():
        logging.getLogger(__name__).info("host memory: %s", host_memory.applied())
    from sparrow_jax.train.run_control import STOPPING_ERRORS, exit_code
    if cfg.train.stage == "rl":
        from sparrow_jax.rl.trainer import train_rl as train
    else:
        from sparrow_jax.train.loop import train_stage as train
    try:
        summary = train(cfg, args.workdir, max_steps_this_run=args.max_steps_this_run)
    except STOPPING_ERRORS as err:
        return exit_code("sparrow train", err)
    if summary.get("finished"):
        figures = " ".join(f"{k}={v:.4g}" for k, v in summary["eval"].items()
                           if not k.startswith("auc/"))
        print(f"{summary['stage']} finished at step {summary['step']}: {figures}")
    return 0
