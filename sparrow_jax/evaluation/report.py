"""The `sparrow eval` report: report.json (schema in README.md "Evaluation report"), report.md, PNG
plots and answers.jsonl (every prompt's dialogue and verdict), written to one directory.

    report = write_eval_report(result, out_dir, baseline=baseline_result)
"""
from __future__ import annotations

import json
import os
from typing import Mapping

from sparrow_jax.data.jsonl import atomic_write
from sparrow_jax.dialogue.turns import to_json as turns_json
from sparrow_jax.evaluation import plots
from sparrow_jax.evaluation.evaluator import EvalResult
from sparrow_jax.evaluation.metrics import INTERVAL_METHOD, rate_interval
from sparrow_jax.evaluation.schema import EVAL_REPORT_SCHEMA, METRICS_SCHEMA, RATE_KEYS, validate

SCHEMA_VERSION = 2  # 2: 95% Wilson intervals and counts (metrics.intervals, per_rule low/high)
PLOT_FILES = {"rule_violations": "rule_violations.png", "training_curves": "training_curves.png",
              "comparison": "comparison.png"}
_HEADLINE = ("rule_violation_rate", "supported_and_correct_rate", "search_rate", "pref_win_rate")


def _float_or_none(value):
    return None if value is None else float(value)


def _interval(value: Mapping) -> dict:
    return {"low": _float_or_none(value["low"]), "high": _float_or_none(value["high"]),
            "n": int(value["n"])}


def report_metrics(metrics: Mapping) -> dict:
    """The summary's figures with JSON types (rates float or null), keys of METRICS_SCHEMA only.
    A rate without an interval in `metrics` gets none (n 0) if it is null; a non-null one must have it."""
    out = {}
    for key, schema in METRICS_SCHEMA.items():
        value = metrics.get(key)
        if key == "per_rule":
            out[key] = {rule: {"rate": float(v["rate"]), "violations": int(v["violations"]),
                               "probes": int(v["probes"]), "low": float(v["low"]),
                               "high": float(v["high"])} for rule, v in (value or {}).items()}
        elif key == "intervals":
            given = value or {}
            missing = [k for k in RATE_KEYS if k not in given and metrics.get(k) is not None]
            if missing:
                raise ValueError(f"metrics give {missing[0]} without its interval")
            out[key] = {k: _interval(given[k]) if k in given else rate_interval(None, 0)
                        for k in RATE_KEYS}
        elif schema is int:
            out[key] = int(value or 0)
        else:
            out[key] = _float_or_none(value)
    return out


def build_eval_report(result: EvalResult, baseline: EvalResult | None = None,
                      plot_files: Mapping[str, str | None] | None = None, notes=()) -> dict:
    """The report.json dict of one evaluation (and its baseline's figures), validated."""
    agent, settings, rl = result.agent, result.settings, result.agent.cfg.rl
    report = {
        "schema_version": SCHEMA_VERSION,
        "judge": result.judge,
        "interval_method": INTERVAL_METHOD,
        "model": {"name": result.name, "workdir": agent.workdir, "stage": agent.stage,
                  "step": int(agent.step),
                  "n_best": int(settings.n_best),
                  "evidence": settings.evidence if settings.n_best == 1 else f"@{settings.n_best}",
                  "rerank_formula": settings.formula if settings.n_best > 1 else None,
                  "pref_rm": agent.pref_rm_source, "rule_rm": agent.rule_rm_source},
        "data": {"dir": agent.data_dir, "split": settings.split, "prompts": int(result.metrics["prompts"]),
                 "by_source": {k: int(v) for k, v in result.metrics["by_source"].items()}},
        "sampling": {"max_prompt_len": int(rl.max_prompt_len), "max_new_tokens": int(rl.max_new_tokens),
                     "temperature": float(rl.temperature), "top_p": float(rl.top_p), "top_k": int(rl.top_k),
                     "seed": int(settings.seed), "batch_size": int(settings.batch_size)},
        "metrics": report_metrics(result.metrics),
        "baseline": None if baseline is None else {
            "name": baseline.name, "workdir": baseline.agent.workdir, "step": int(baseline.agent.step),
            "metrics": report_metrics(baseline.metrics)},
        "timings": {k: float(result.timings[k]) for k in
                    ("wall_seconds", "sampling_seconds", "judging_seconds", "prompts_per_second")},
        "plots": dict(plot_files or {}),
        "notes": [str(n) for n in notes],
    }
    validate(report, EVAL_REPORT_SCHEMA)
    return report


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def fmt_rate(rate, interval: Mapping | None) -> str:
    """`0.324 [0.196, 0.486] n=37`: a rate, its 95% interval and count (`n/a` when not judged)."""
    if rate is None:
        return "n/a"
    if not interval or interval["low"] is None:
        return f"{rate:.3f}"
    return f"{rate:.3f} [{interval['low']:.3f}, {interval['high']:.3f}] n={interval['n']}"


def eval_markdown(report: Mapping) -> str:
    """report.md: what was evaluated, the headline figures (and the baseline's), per rule, timings."""
    m, model = report["metrics"], report["model"]
    base = report["baseline"]
    lines = [f"# Evaluation: {model['name']}", "",
             f"Workdir `{model['workdir']}` ({model['stage']}, step {model['step']}), evidence "
             f"{model['evidence']}" + (f" (rerank formula {model['rerank_formula']})"
                                       if model["rerank_formula"] else "") + ".",
             f"Judge: **{report['judge']}**. Prompts: {report['data']['prompts']} from "
             f"`{report['data']['dir']}` ({report['data']['split']}): "
             + ", ".join(f"{k} {v}" for k, v in report["data"]["by_source"].items()) + ".",
             f"Reward models: pref `{model['pref_rm']}`, rule `{model['rule_rm']}`.", "",
             "Each rate: value [95% Wilson score interval] n = prompts it is over.", "",
             "| metric | " + model["name"] + (f" | {base['name']} (baseline)" if base else "") + " |",
             "|---|---:" + ("|---:" if base else "") + "|"]
    for key in _HEADLINE + ("evidence_support_rate", "malformed_rate", "search_rate_all"):
        label = key + (f" (vs {base['name']})" if key == "pref_win_rate" and base else "")
        lines.append(f"| {label} | {fmt_rate(m[key], m['intervals'][key])}"
                     + (f" | {fmt_rate(base['metrics'][key], base['metrics']['intervals'][key])}"
                        if base else "") + " |")
    lines += ["", f"Rule probes judged: {m['rule_probes']}; "
              f"factual questions judged: {m['factual_prompts']}.",
              "", "## Violations per probed rule", "",
              "| rule | rate | 95% interval | violations | probes |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {rule} | {v['rate']:.3f} | [{v['low']:.3f}, {v['high']:.3f}] | {v['violations']} "
              f"| {v['probes']} |" for rule, v in m["per_rule"].items()] or ["| (no judged probes) | | | | |"]
    t = report["timings"]
    lines += ["", "## Timings", "", f"{t['wall_seconds']:.1f} s in all ({t['sampling_seconds']:.1f} s "
              f"answering, {t['judging_seconds']:.1f} s judging), "
              f"{t['prompts_per_second']:.2f} prompts/s.", ""]
    shown = [(name, path) for name, path in report["plots"].items() if path]
    if shown:
        lines += ["## Plots", ""] + [f"![{name}]({path})" for name, path in shown] + [""]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += ["Every prompt's dialogue and verdict: `answers.jsonl`.", ""]
    return "\n".join(lines)


def answers_jsonl(result: EvalResult) -> str:
    """One line per prompt: id, source, rule_id / entity / attribute, dialogue, verdict, malformed."""
    lines = []
    for answer, verdict in zip(result.answers, result.verdicts):
        p = answer.prompt
        lines.append(json.dumps({
            "id": p.id, "source": p.source, "rule_id": p.rule_id, "entity": p.entity,
            "attribute": p.attribute, "dialogue": turns_json(answer.dialogue),
            "violated": verdict.violated, "supported": verdict.supported, "searched": verdict.searched,
            "malformed": answer.malformed, "elo": answer.elo, "candidates": answer.candidates},
            ensure_ascii=False))
    return "\n".join(lines) + "\n"


def write_eval_report(result: EvalResult, out_dir: str, baseline: EvalResult | None = None) -> dict:
    """Write report.json, report.md, answers.jsonl and the plots to `out_dir`; return the report."""
    os.makedirs(out_dir, exist_ok=True)
    notes, files = list(result.judge_notes), {}
    files["rule_violations"] = plots.plot_rule_violations(
        result.metrics["per_rule"], os.path.join(out_dir, PLOT_FILES["rule_violations"]),
        f"Rule violations: {result.name} ({result.judge})")
    if files["rule_violations"] is None:
        notes.append("no rule_violations plot: no red_team probe was judged")
    files["training_curves"] = plots.plot_training_curves(
        result.agent.workdir, os.path.join(out_dir, PLOT_FILES["training_curves"]))
    if files["training_curves"] is None:
        notes.append(f"no training_curves plot: {result.agent.workdir}/logs/metrics.jsonl has no "
                     "`reward` or `kl` (only RL runs log them)")
    compared = {result.name: {k: result.metrics.get(k) for k in _HEADLINE}}
    intervals = {result.name: result.metrics["intervals"]}
    if baseline is not None:
        compared[f"{baseline.name} (baseline)"] = {k: baseline.metrics.get(k) for k in _HEADLINE}
        intervals[f"{baseline.name} (baseline)"] = baseline.metrics["intervals"]
    files["comparison"] = plots.plot_model_comparison(
        compared, os.path.join(out_dir, PLOT_FILES["comparison"]), metrics=_HEADLINE,
        title=f"{result.name}: headline rates ({result.judge} judge; 95% Wilson intervals)",
        intervals=intervals)
    plot_files = {k: (os.path.basename(v) if v else None) for k, v in files.items()}
    report = build_eval_report(result, baseline, plot_files, notes)
    with atomic_write(os.path.join(out_dir, "report.json")) as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with atomic_write(os.path.join(out_dir, "report.md")) as f:
        f.write(eval_markdown(report))
    with atomic_write(os.path.join(out_dir, "answers.jsonl")) as f:
        f.write(answers_jsonl(result))
    return report
