"""Temperature calibration of the reward models' probabilities, measured on held-out data.

A reward model's probabilities need not be calibrated: P(broken) 0.44-0.55 for a harmless answer
(issue 19). One temperature T per model rescales its logits, p = sigmoid(logit / T) for the rule
RM and softmax(elo / T) over a comparison's candidates for the preference RM. T is fitted (NLL,
a log-spaced grid) on the even rows of the held-out set and the expected calibration error is
measured before and after on the odd rows, so the "after" figure is not measured on what T was
fitted to. `stage_eval` reports `temperature`, `ece_before`, `ece_after` in summary.json.

Inference applies it (`evaluation.scoring.Scorer`, the one scorer of chat, reranking and the
reward-model judge): `read_temperature` finds the temperature fitted for an RM checkpoint,
`calibrated_probs` / `calibrated_elo` apply it. The RL reward keeps the raw scores.
"""
from __future__ import annotations

import json

import numpy as np

TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
N_BINS = 10
_EPS = 1e-7


def binary_logits(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(logits_BxK):
    finite = np.where(np.isfinite(logits_BxK), logits_BxK, -np.inf)
    shifted = finite - finite.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def binary_ece(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """Sum over equal-width bins of |mean p - share of positives| weighted by the bin's share."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    return float(sum(abs(p[bins == b].mean() - y[bins == b].mean()) * np.mean(bins == b)
                     for b in range(n_bins) if np.any(bins == b)))


def top_label_ece(probs_BxK: np.ndarray, target_B: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE of the top candidate's probability against whether it is the target."""
    confidence = probs_BxK.max(axis=1)
    correct = probs_BxK.argmax(axis=1) == np.asarray(target_B)
    return binary_ece(confidence, correct, n_bins)


def _fit(nll_at) -> float:
    losses = [nll_at(t) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


def calibrate_binary(p: np.ndarray, y: np.ndarray) -> dict[str, float] | None:
    """{temperature, ece_before, ece_after} for probabilities p of labels y; None under 4 examples."""
    logits, y = binary_logits(p), np.asarray(y, np.float64)
    if len(y) < 4:
        return None
    fit, test = slice(0, None, 2), slice(1, None, 2)

    def nll(t):
        q = np.clip(_sigmoid(logits[fit] / t), _EPS, 1 - _EPS)
        return -np.mean(y[fit] * np.log(q) + (1 - y[fit]) * np.log1p(-q))
    t = _fit(nll)
    return {"temperature": t, "ece_before": binary_ece(_sigmoid(logits[test]), y[test]),
            "ece_after": binary_ece(_sigmoid(logits[test] / t), y[test])}


def calibrate_choice(logits_BxK: np.ndarray, target_B: np.ndarray) -> dict[str, float] | None:
    """The same for a choice among K candidates (invalid ones -inf); None under 4 examples."""
    logits_BxK, target_B = np.asarray(logits_BxK, np.float64), np.asarray(target_B)
    if len(target_B) < 4:
        return None
    fit, test = slice(0, None, 2), slice(1, None, 2)
    rows = np.arange(len(target_B[fit]))

    def nll(t):
        q = _softmax(logits_BxK[fit] / t)[rows, target_B[fit]]
        return -np.mean(np.log(np.clip(q, _EPS, 1.0)))
    t = _fit(nll)
    return {"temperature": t, "ece_before": top_label_ece(_softmax(logits_BxK[test]), target_B[test]),
            "ece_after": top_label_ece(_softmax(logits_BxK[test] / t), target_B[test])}


def calibrated_probs(p: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): the rule RM's P(broken) under its fitted temperature (float32).
    T = 1 returns p as is; otherwise p is clipped to [1e-7, 1 - 1e-7] first, as in the fit."""
    p = np.asarray(p, np.float32)
    if temperature == 1.0:
        return p
    return _sigmoid(binary_logits(p) / temperature).astype(np.float32)


def calibrated_elo(elo: np.ndarray, temperature: float) -> np.ndarray:
    """elo / T: softmax over candidates (and sigmoid of a difference) becomes the calibrated
    choice probability the preference RM's temperature was fitted for (float32)."""
    return (np.asarray(elo, np.float32) / np.float32(temperature)).astype(np.float32)


def read_temperature(workdir: str, step: int) -> tuple[float | None, str]:
    """(the temperature stage_eval fitted for `workdir`'s checkpoint at `step`, where it was read)
    or (None, why not). Looks in summary.json (written at the end of training) when it is of that
    step, else for the eval record of that step in logs/metrics.jsonl (the last one wins)."""
    from sparrow_jax.train import storage
    summary = storage.run_path(storage.join(workdir, "summary.json"))
    if summary.exists():
        try:
            record = json.loads(summary.read_text())
        except ValueError:
            record = {}
        value = record.get("eval", {}).get("temperature")
        if record.get("step") == step and _usable(value):
            return float(value), str(summary)
    metrics = storage.run_path(storage.join(workdir, "logs", "metrics.jsonl"))
    found = None
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a killed run
            if record.get("split") == "eval" and record.get("step") == step \
                    and _usable(record.get("temperature")):
                found = float(record["temperature"])
        if found is not None:
            return found, f"{metrics} (eval at step {step})"
    return None, (f"no temperature fitted for step {step} in {summary} or {metrics} (trained before "
                  "calibration, or no held-out eval at that step)")


def _usable(value) -> bool:
    return isinstance(value, (int, float)) and np.isfinite(value) and value > 0
