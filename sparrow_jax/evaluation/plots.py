"""PNG plots for the reports (matplotlib, Agg backend: no display needed).

  plot_rule_violations    bars: violation rate per probed rule, 95% interval error bars, n on the bars
  plot_training_curves    reward and KL against the RL step, from a workdir's logs/metrics.jsonl
  plot_model_comparison   grouped bars: each model's headline rates side by side (with intervals: error
                          bars and n)
Each returns the path written, or None when there is nothing to plot. matplotlib is imported on the
first plot, not with this module: every command that reads an evaluation module imports the package,
and some of them (`sparrow chat`, `sparrow rate`) draw nothing.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from sparrow_jax.train.metrics import read_metrics

CURVE_KEYS = ("reward", "kl")
COMPARISON_METRICS = ("rule_violation_rate", "supported_and_correct_rate", "search_rate",
                      "pref_win_rate_vs_sft")


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def error_bars(rates: Sequence[float | None], intervals: Sequence[Mapping | None]) -> np.ndarray:
    """matplotlib's asymmetric yerr [2, K]: rate - low and high - rate (0 where there is no interval)."""
    out = np.zeros((2, len(rates)))
    for i, (rate, interval) in enumerate(zip(rates, intervals)):
        if rate is not None and interval and interval.get("low") is not None:
            out[:, i] = max(0.0, rate - interval["low"]), max(0.0, interval["high"] - rate)
    return out


def plot_rule_violations(per_rule: Mapping[str, Mapping], path: str, title: str = "Rule violations"
                         ) -> str | None:
    """per_rule: {rule_id: {"rate", "probes", "low", "high", ...}} (`metrics.per_rule_violations`)."""
    if not per_rule:
        return None
    rules = list(per_rule)
    rates = [float(per_rule[r]["rate"]) for r in rules]
    fig, ax = _pyplot().subplots(figsize=(max(5.0, 0.7 * len(rules) + 2), 3.8))
    yerr = error_bars(rates, [per_rule[r] for r in rules])
    ax.bar(range(len(rules)), rates, color="tab:red", yerr=yerr, capsize=3, ecolor="black")
    for i, rule in enumerate(rules):
        ax.annotate(f"n={per_rule[rule]['probes']}", (i, rates[i] + yerr[1, i]),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rules)), rules, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("violation rate (95% Wilson interval)")
    ax.set_title(title)
    return _save(fig, path)


def training_curves(records: Sequence[Mapping], keys: Sequence[str] = CURVE_KEYS
                    ) -> dict[str, tuple[list[int], list[float]]]:
    """{key: (steps, values)} from metrics.jsonl records of split "train" that have the key."""
    curves = {}
    for key in keys:
        points = [(int(r["step"]), float(r[key])) for r in records
                  if r.get("split", "train") == "train" and key in r]
        if points:
            curves[key] = ([s for s, _ in points], [v for _, v in points])
    return curves


def plot_training_curves(workdir: str, path: str, keys: Sequence[str] = CURVE_KEYS) -> str | None:
    """Reward and KL over RL training (`<workdir>/logs/metrics.jsonl`); None if the log has neither.

    Each logged value is one batch's mean (noisy: the prompt mix changes per batch), so a running
    mean over a tenth of the points is drawn over it."""
    curves = training_curves(read_metrics(os.path.join(workdir, "logs")), keys)
    if not curves:
        return None
    fig, axes = _pyplot().subplots(1, len(curves), figsize=(4.5 * len(curves), 3.4), squeeze=False)
    for ax, (key, (steps, values)) in zip(axes[0], curves.items()):
        ax.plot(steps, values, marker="." if len(steps) < 50 else None, alpha=0.4, label="per batch")
        window = max(1, len(values) // 10)
        if window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, label=f"mean of {window}")
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} over training")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_model_comparison(models: Mapping[str, Mapping[str, float | None]], path: str,
                          metrics: Sequence[str] = COMPARISON_METRICS, title: str = "Models compared",
                          intervals: Mapping[str, Mapping[str, Mapping]] | None = None) -> str | None:
    """models: {name: {metric: rate or None}}; one group of bars per metric, one bar per model.
    intervals: {name: {metric: {"low", "high", "n"}}} draws each rate's interval as an error bar and
    its n under the value."""
    metrics = [m for m in metrics if any(v.get(m) is not None for v in models.values())]
    if not models or not metrics:
        return None
    width = 0.8 / len(models)
    fig, ax = _pyplot().subplots(figsize=(max(6.0, 1.9 * len(metrics) + 2), 4.2))
    for i, (name, values) in enumerate(models.items()):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(metrics))]
        heights = [values.get(m) or 0.0 for m in metrics]
        bounds = [(intervals or {}).get(name, {}).get(m) for m in metrics]
        yerr = error_bars([values.get(m) for m in metrics], bounds)
        ax.bar(xs, heights, width, label=name, yerr=yerr if intervals else None, capsize=2,
               ecolor="black")
        for j, metric in enumerate(metrics):
            text = "n/a" if values.get(metric) is None else f"{values[metric]:.2f}"
            if bounds[j] and bounds[j]["n"] and values.get(metric) is not None:
                text += f"\nn={bounds[j]['n']}"
            ax.annotate(text, (xs[j], heights[j] + yerr[1, j]), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics], fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
