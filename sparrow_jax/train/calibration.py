"""Temperature calibration of the reward models' probabilities, measured on held-out data.

A reward model's probabilities need not be calibrated: P(broken) 0.44-0.55 for a harmless answer
(issue 19). One temperature T per model rescales its logits, p = sigmoid(logit / T) for the rule
RM and softmax(elo / T) over a comparison's candidates for the preference RM. T is fitted (NLL,
a log-spaced grid) on the even rows of the held-out set and the expected calibration error is
measured before and after on the odd rows, so the "after" figure is not measured on what T was
fitted to. `stage_eval` reports `temperature`, `ece_before`, `ece_after` in summary.json.
"""
from __future__ import annotations

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
