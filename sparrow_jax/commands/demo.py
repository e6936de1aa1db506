"""`sparrow demo --workdir ROOT [--n-best 8] [--max-prompts N] [--serial] [--config.a.b=v ...]`.

The whole recipe at toy scale on this machine (sparrow_jax/demo.py): toy world, lm, sft,
pref_rm, rule_rm, rl, then sft / sft@N / rl / rl@N judged by the world's oracle on
held-out prompts; prints the results table and writes ROOT/report.json, report.md and
plots. A rerun skips finished stages and resumes interrupted ones. Overrides apply to
every stage (`--config.train.steps=3` makes a smoke run). Exit codes: 0 done; 1 training
failed; 2 bad config, data or checkpoint; 143 preempted (rerun to resume).
"""
from __future__ import annotations

import logging
import os


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="root of the demo (created if missing)")
    parser.add_argument("--config", default="",
                        help="experiment file with one variant per stage (default: experiments/tiny_cpu.py)")
    parser.add_argument("--n-best", type=int, default=8, help="N of the reranked models (even, >= 2)")
    parser.add_argument("--max-prompts", type=int, default=0, help="held-out prompts per model (0 = all)")
    parser.add_argument("--world-seed", type=int, default=0, help="toy world seed")
    parser.add_argument("--world-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="toy world setting, e.g. --world-set n_dialogues=300 (repeatable)")
    parser.add_argument("--serial", action="store_true",
                        help="train rule_rm after pref_rm in this process (default: beside it, in a "
                             "second process; its log is ROOT/rule_rm/train.log)")


def run(args, overrides) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from sparrow_jax import demo
    from sparrow_jax.train.run_control import STOPPING_ERRORS, exit_code
    settings = demo.DemoSettings(experiment=args.config, overrides=tuple(overrides),
                                 world_seed=args.world_seed, world_settings=tuple(args.world_set),
                                 n_best=args.n_best, max_prompts=args.max_prompts,
                                 parallel_reward_models=not args.serial)
    try:
        report = demo.run_demo(args.workdir, settings)
    except STOPPING_ERRORS as err:  # WorkdirError is a ValueError
        return exit_code("sparrow demo", err)
    rm = report["reward_models"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\nHeld-out results (judge: {report['judge']}), whole demo {report['wall_seconds']:.0f} s")
    print(f"reward models: preference accuracy {fmt(rm['pref_rm_accuracy'])}, "
          f"rule macro AUC {fmt(rm['rule_rm_auc'])}\n")
    print(demo.results_table(report))
    print(f"\nreport: {os.path.join(args.workdir, 'report.md')}")
    return 0
