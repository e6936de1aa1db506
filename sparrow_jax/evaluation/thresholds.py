"""The reward-model judge's P(broken) threshold, chosen on held-out rule ratings.

    threshold = held_out_threshold(scorer, data_dir)   # or None: keep the judge's default 0.5

The rule RM's probabilities need not be calibrated (issue 19: P(broken) 0.44-0.55 for harmless
answers; the scorer applies a fitted temperature when the RM has one, which moves no ranking), so
"broken" = P > 0.5 can be far off. The judge instead uses the threshold that
classifies the data dir's held-out ratings (`rule_ratings.test.jsonl`, the rules the rule RM
scores, at most `max_records`) best: the highest accuracy, ties to the threshold closest to
0.5. Chosen once per evaluation, on data the rule RM did not train on.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class Threshold:
    value: float
    accuracy: float   # on the held-out ratings, at `value`
    n: int            # held-out ratings it was chosen on

    def note(self) -> str:
        return (f"reward-model judge: rule broken when P(broken) > {self.value:.3f}, the threshold "
                f"with the best accuracy ({self.accuracy:.3f}) on {self.n} held-out rule ratings")


def choose_threshold(p_broken: Sequence[float], broken: Sequence[bool]) -> tuple[float, float]:
    """(threshold t, accuracy of "broken iff p > t") maximising accuracy over every cut between
    the sorted probabilities (and 0.5); ties go to the t closest to 0.5."""
    p = np.asarray(p_broken, np.float64)
    y = np.asarray(broken, bool)
    if p.size == 0:
        raise ValueError("no held-out ratings to choose a threshold on")
    values = np.unique(p)
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1]],
                           [DEFAULT_THRESHOLD]])
    accuracy = np.array([np.mean((p > t) == y) for t in cuts])
    best = np.flatnonzero(accuracy == accuracy.max())
    pick = best[np.argmin(np.abs(cuts[best] - DEFAULT_THRESHOLD))]
    return float(np.clip(cuts[pick], 0.0, 1.0)), float(accuracy[pick])


def held_out_threshold(scorer, data_dir: str, max_records: int = 512) -> Threshold | None:
    """The threshold chosen on DATA/rule_ratings.test.jsonl (rules the scorer scores), or None when
    the file is missing or has no rating of such a rule."""
    from sparrow_jax.data import schemas
    path = os.path.join(data_dir, "rule_ratings.test.jsonl")
    if not os.path.exists(path):
        return None
    column = {rule_id: r for r, rule_id in enumerate(scorer.rule_ids)}
    records = [r for r in schemas.read_jsonl(path, "rule_ratings") if r.rule_id in column]
    records = records[:max_records]
    if not records:
        return None
    probs = scorer.rule_probs([r.dialogue for r in records])
    p = [float(probs[i, column[r.rule_id]]) for i, r in enumerate(records)]
    value, accuracy = choose_threshold(p, [r.broken for r in records])
    return Threshold(value, accuracy, len(records))
