"""The demo's report: several evaluated models side by side (schema: README.md "Evaluation report").

    results = {"sft": evaluate_agent(...), "sft@8": ..., "rl": ..., "rl@8": ...}
    report = demo_report(results, wall_seconds=elapsed,
                         reward_models=reward_model_figures("ROOT/pref_rm", "ROOT/rule_rm"))
    write_demo_report(report, "ROOT", results=results, rl_workdir="ROOT/rl")

`pref_win_rate_vs_sft` is each model's preference win rate against the baseline model's answers to the
same prompts (0.5 for the baseline itself), taken from the result when it was evaluated with that
baseline, else computed here with the model's own preference RM. Every rate has its 95% Wilson interval
and count in `intervals` (the baseline's 0.5 against itself: n 0, no interval: it is not measured).
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

from sparrow_jax.data.jsonl import atomic_write
from sparrow_jax.evaluation import plots
from sparrow_jax.evaluation.evaluator import EvalResult, paired_count, win_rate_against
from sparrow_jax.evaluation.metrics import INTERVAL_METHOD, rate_interval
from sparrow_jax.evaluation.report import fmt_rate
from sparrow_jax.evaluation.schema import DEMO_REPORT_SCHEMA, validate
from sparrow_jax.evaluation.scoring import Scorer

DEMO_FILES = {"comparison": "comparison.png", "rule_violations": "rule_violations.png",
              "training_curves": "training_curves.png"}


def _summary_figure(workdir: str | None, key: str) -> float | None:
    """`summary.json` eval[key] of a finished stage, None if absent or not finite."""
    path = os.path.join(workdir or "", "summary.json")
    if not workdir or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        value = json.load(f).get("eval", {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def reward_model_figures(pref_rm_workdir: str | None, rule_rm_workdir: str | None) -> dict:
    """{"pref_rm_accuracy", "rule_rm_auc"}: the RM stages' held-out figures (stage_eval's `accuracy`
    and `macro_auc` in their summary.json), None where a workdir or figure is missing."""
    return {"pref_rm_accuracy": _summary_figure(pref_rm_workdir, "accuracy"),
            "rule_rm_auc": _summary_figure(rule_rm_workdir, "macro_auc")}


def _win_rate(name: str, result: EvalResult, results: Mapping[str, EvalResult], baseline: str):
    """(win rate against the baseline or None, its interval)."""
    if name == baseline:
        return 0.5, rate_interval(None, 0)
    if result.baseline == baseline and result.metrics.get("pref_win_rate") is not None:
        return float(result.metrics["pref_win_rate"]), result.metrics["intervals"]["pref_win_rate"]
    if baseline not in results or not result.agent.has_pref_rm:
        return None, rate_interval(None, 0)
    answers, base = result.answers, results[baseline].answers
    win = win_rate_against(Scorer(result.agent), answers, base)
    return win, rate_interval(win, paired_count(answers, base))


def demo_report(results: Mapping[str, EvalResult], *, wall_seconds: float, reward_models: Mapping,
                baseline: str = "sft") -> dict:
    """The demo's report.json dict (validated). All results must share one judge."""
    judges = {r.judge for r in results.values()}
    if len(judges) != 1:
        raise ValueError(f"the models were judged differently ({sorted(judges)}); use one judge for all")
    models = {}
    for name, result in results.items():
        m = result.metrics
        win, win_interval = _win_rate(name, result, results, baseline)
        keys = ("rule_violation_rate", "supported_and_correct_rate", "search_rate")
        models[name] = {key: None if m.get(key) is None else float(m[key]) for key in keys}
        models[name]["pref_win_rate_vs_sft"] = None if win is None else float(win)
        models[name]["intervals"] = {
            **{key: _plain_interval(m["intervals"][key]) for key in keys},
            "pref_win_rate_vs_sft": _plain_interval(win_interval)}
    report = {"judge": judges.pop(), "interval_method": INTERVAL_METHOD,
              "wall_seconds": float(wall_seconds),
              "reward_models": {k: (None if reward_models.get(k) is None else float(reward_models[k]))
                                for k in ("pref_rm_accuracy", "rule_rm_auc")},
              "models": models}
    validate(report, DEMO_REPORT_SCHEMA)
    return report


def _plain_interval(interval: Mapping) -> dict:
    low, high = interval["low"], interval["high"]
    return {"low": None if low is None else float(low), "high": None if high is None else float(high),
            "n": int(interval["n"])}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def demo_markdown(report: Mapping, plot_files: Mapping[str, str | None] = ()) -> str:
    """report.md of the demo: one table row per model, the RM figures, the plots."""
    rm = report["reward_models"]
    lines = ["# Sparrow demo: held-out evaluation", "",
             f"Judge: **{report['judge']}**. Whole demo: {report['wall_seconds']:.0f} s.",
             f"Reward models on held-out data: preference accuracy {_fmt(rm['pref_rm_accuracy'])}, "
             f"rule macro AUC {_fmt(rm['rule_rm_auc'])}.",
             "Each rate: value [95% Wilson score interval] n = prompts it is over.", "",
             "| model | rule violation rate | supported & correct | search rate | pref win rate vs sft |",
             "|---|---:|---:|---:|---:|"]
    for name, m in report["models"].items():
        cells = [fmt_rate(m[key], m["intervals"][key]) for key in
                 ("rule_violation_rate", "supported_and_correct_rate", "search_rate",
                  "pref_win_rate_vs_sft")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    shown = [(k, v) for k, v in dict(plot_files).items() if v]
    if shown:
        lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in shown]
    return "\n".join(lines) + "\n"


def write_demo_report(report: Mapping, out_dir: str, *, results: Mapping[str, EvalResult] | None = None,
                      rl_workdir: str | None = None) -> dict[str, str | None]:
    """Write report.json, report.md and the plots (comparison; per-rule violations of every model when
    `results` are given; RL reward/KL curves when `rl_workdir` has them). Returns {plot: file or None}."""
    os.makedirs(out_dir, exist_ok=True)
    path = lambda key: os.path.join(out_dir, DEMO_FILES[key])  # noqa: E731
    files = {"comparison": plots.plot_model_comparison(
        report["models"], path("comparison"),
        title=f"Held-out rates ({report['judge']} judge; 95% Wilson intervals)",
        intervals={name: m["intervals"] for name, m in report["models"].items()})}
    if results:
        per_rule = {name: {rule: v["rate"] for rule, v in r.metrics["per_rule"].items()}
                    for name, r in results.items()}
        per_rule_intervals = {name: {rule: {"low": v["low"], "high": v["high"], "n": v["probes"]}
                                     for rule, v in r.metrics["per_rule"].items()}
                              for name, r in results.items()}
        rules = sorted({rule for rates in per_rule.values() for rule in rates})
        files["rule_violations"] = plots.plot_model_comparison(
            per_rule, path("rule_violations"), metrics=rules,
            title="Violation rate per probed rule (95% Wilson intervals, n probes)",
            intervals=per_rule_intervals)
    if rl_workdir:
        files["training_curves"] = plots.plot_training_curves(rl_workdir, path("training_curves"))
    files = {k: (os.path.basename(v) if v else None) for k, v in files.items()}
    with atomic_write(os.path.join(out_dir, "report.json")) as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with atomic_write(os.path.join(out_dir, "report.md")) as f:
        f.write(demo_markdown(report, files))
    return files
