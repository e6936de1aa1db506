"""`sparrow eval --workdir DIR [--step N] [--baseline DIR] [--n-best 8] [--out DIR] [--max-prompts N]`.

Evaluates a policy workdir (lm, sft or rl) on the held-out prompts of its data dir and writes
report.json, report.md, answers.jsonl and PNG plots (README.md, "Evaluation report"). The reward models
come from --pref-rm / --rule-rm, the rl checkpoint, or sibling workdirs (`evaluation/agent.py`).
Optional: --config FILE[:variant] to evaluate with another config (the checkpoint must have its model
shape) and `--config.a.b=v` overrides (e.g. `--config.data.dir=` for a moved world).
Exit codes: 0 done; 2 bad input (missing or empty workdir, another model shape, missing data or RM),
printed as one message saying what to run first.
"""
from __future__ import annotations

import logging
import os
import sys


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="the policy's workdir (lm, sft or rl stage)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--baseline", default=None, help="another policy workdir to compare against")
    parser.add_argument("--n-best", type=int, default=1, help="rerank @N (even N >= 2); 1 = no reranking")
    parser.add_argument("--out", default=None, help="report directory (default: WORKDIR/eval/step_N[_atK])")
    parser.add_argument("--max-prompts", type=int, default=0, help="first N held-out prompts (0 = all)")
    parser.add_argument("--pref-rm", default=None, help="preference RM workdir (default: see above)")
    parser.add_argument("--rule-rm", default=None, help="rule RM workdir (default: see above)")
    parser.add_argument("--evidence", default="free", choices=("free", "choose", "always", "never"),
                        help="evidence mode without reranking (free: the policy samples the speaker)")
    parser.add_argument("--formula", default="sparrow", choices=("sparrow", "elo_only", "rules_only"),
                        help="rerank formula (docs/recipe.md section 7)")
    parser.add_argument("--judge", default="auto", choices=("auto", "oracle", "reward_models"),
                        help="auto: the toy world's oracle when the data dir has world.json")
    parser.add_argument("--batch-size", type=int, default=32, help="sampled rows per call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=None,
                        help="experiment file[:variant] (default: the checkpoint's own config)")


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def default_out_dir(workdir: str, step: int, n_best: int) -> str:
    return os.path.join(workdir, "eval", f"step_{step}" + (f"_at{n_best}" if n_best > 1 else ""))


def run(args, overrides) -> int:
    _quiet_logs()
    from sparrow_jax.evaluation.checkpoint_params import WorkdirError
    from sparrow_jax.evaluation.scoring import MissingRewardModel
    try:
        return _evaluate(args, overrides)
    except (WorkdirError, MissingRewardModel, FileNotFoundError) as err:
        print(f"sparrow eval: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # bad settings (e.g. an odd --n-best) or data (schema errors name the line)
        print(f"sparrow eval: {err}", file=sys.stderr)
        return 2


def _start_processes(overrides) -> None:
    """Join a multi-process run when `--config.distributed.*` says so (or on a TPU VM), before
    anything touches a device. The checkpoint's own `distributed` section is the training
    run's and is not used: only the command line's."""
    from sparrow_jax import distributed
    from sparrow_jax.config import apply_overrides, default_config
    mine = [o for o in overrides if o.startswith("--config.distributed.")]
    distributed.initialize(apply_overrides(default_config(), mine).distributed)


def _evaluate(args, overrides) -> int:
    from sparrow_jax import distributed
    from sparrow_jax.config import load_experiment
    from sparrow_jax.evaluation.agent import load_agent
    from sparrow_jax.evaluation.evaluator import EvalSettings, evaluate_agent, load_prompts
    from sparrow_jax.evaluation.judge import make_judge
    from sparrow_jax.evaluation.report import write_eval_report
    from sparrow_jax.evaluation.scoring import Scorer

    _start_processes(overrides)
    settings = EvalSettings(n_best=args.n_best, evidence=args.evidence, formula=args.formula,
                            batch_size=args.batch_size, seed=args.seed, max_prompts=args.max_prompts)
    config = load_experiment(args.config) if args.config else None
    agent = load_agent(args.workdir, step=args.step, pref_rm=args.pref_rm, rule_rm=args.rule_rm,
                       config=config, overrides=overrides)
    print(f"evaluating {agent.label} ({agent.stage}); pref RM: {_rm_label(agent, 'pref_rm')}, "
          f"rule RM: {_rm_label(agent, 'rule_rm')}", file=sys.stderr)
    from sparrow_jax.dialogue.rules import load_rules
    rule_ids = {rule.id for rule in load_rules(agent.cfg.data.rules or None)}
    prompts = load_prompts(agent.data_dir, settings.split, settings.max_prompts, rule_ids)
    scorer = Scorer(agent)
    judge = make_judge(agent.data_dir, scorer, args.judge)
    for role in required_reward_models(settings.n_best, bool(args.baseline), judge.name):
        scorer.require(role)

    baseline = None
    if args.baseline:
        base_agent = load_agent(args.baseline, config=config, overrides=overrides)
        baseline = evaluate_agent(base_agent, prompts, judge, EvalSettings(
            evidence=args.evidence, batch_size=args.batch_size, seed=args.seed), name=_name(args.baseline))
    result = evaluate_agent(agent, prompts, judge, settings, scorer=scorer, baseline=baseline,
                            name=_name(args.workdir) + (f"@{settings.n_best}" if settings.n_best > 1 else ""))
    if not distributed.is_main_process():
        return 0  # every process computed the same result; process 0 writes it
    out_dir = args.out or default_out_dir(args.workdir, agent.step, settings.n_best)
    report = write_eval_report(result, out_dir, baseline)
    m = report["metrics"]
    figures = " ".join(f"{k}={v:.3f}" for k, v in m.items()
                       if k.endswith("_rate") and isinstance(v, float))
    print(f"{result.name}: {figures} (judge {report['judge']}, {report['data']['prompts']} prompts, "
          f"{report['timings']['wall_seconds']:.1f} s)")
    print(f"report: {os.path.join(out_dir, 'report.md')}")
    return 0


def required_reward_models(n_best: int, has_baseline: bool, judge: str) -> list[str]:
    """Which RMs an evaluation needs: both to rerank or judge, the preference RM for a win rate."""
    if n_best > 1 or judge == "reward_models":
        return ["pref_rm", "rule_rm"]
    return ["pref_rm"] if has_baseline else []


def _rm_label(agent, role: str) -> str:
    """`<source> (temperature T)`, `<source> (uncalibrated)` or `none`."""
    source = getattr(agent, f"{role}_source")
    if not source:
        return "none"
    temperature = getattr(agent, f"{role}_temperature")
    return f"{source} ({'uncalibrated' if temperature is None else f'temperature {temperature:.4g}'})"


def _name(workdir: str) -> str:
    return os.path.basename(os.path.normpath(workdir))
