"""Which comparison item and which probe rule a rater gets next.

Comparisons: a rater first gets an existing item still short of its target number of ratings that they
have not rated (the item they made themselves first, then the oldest), else a new item is sampled. Items
handed out are leased (store.LEASE_S): a live lease counts as a rating, so concurrent raters are not all
sent to the one open item. An
item's target is 2 for a share `double_share` of items (chosen by a hash of the item id, so the share
holds whatever order raters arrive in) and 1 otherwise: the doubly rated items give the agreement figures.

Probes: `focus_rules` orders the rules by the violation rate of the last `sparrow eval` report (its
metrics.per_rule; rules it never saw broken, or all rules without a report, come after in file order) and
keeps the `top` first; each new probe takes the focus rule with the fewest probes so far, so probes
cycle over the rules the model breaks most.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Mapping, Sequence


def target_ratings(item_id: str, double_share: float) -> int:
    """2 for a `double_share` fraction of item ids (deterministic), else 1."""
    if not 0.0 <= double_share <= 1.0:
        raise ValueError(f"double_share must be in [0, 1], got {double_share}")
    digest = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big")
    return 2 if digest / 2.0 ** 64 < double_share else 1


def next_item(store, source, rater_id: int, *, num_candidates: int, double_share: float) -> dict:
    """The comparison item `rater_id` should judge next (sampled from a prompt set if none is open)."""
    taken = store.take_item(rater_id)
    if taken is not None:
        return taken
    return new_item(store, source, rater_id, None, num_candidates=num_candidates, double_share=double_share)


def new_item(store, source, rater_id: int, context: list | None, *, num_candidates: int,
             double_share: float, origin: dict | None = None) -> dict:
    """Sample and store an item on `context` (None: a prompt of the source's prompt sets), leased to
    `rater_id`; `origin` (e.g. {"probe_id": 3}) is kept in its sampling record."""
    item_id = uuid.uuid4().hex
    seed = int(item_id[:8], 16)
    if context is None:
        context = source.contexts[seed % len(source.contexts)]
    candidates, has_evidence = source.compare(context, num_candidates, seed)
    modes = ["always"] * (num_candidates // 2) + ["never"] * (num_candidates - num_candidates // 2)
    sampling = dict(source.sampling, seed=seed, num_candidates=num_candidates, evidence_modes=modes,
                    **(origin or {}))
    store.add_item(item_id, context, candidates, has_evidence, target_ratings(item_id, double_share),
                   source.checkpoint, source.step, sampling, rater_id)
    return store.item(item_id)


def violation_rates(report_path: str | None) -> dict[str, float]:
    """{rule id: violation rate} from a `sparrow eval` report.json (empty without one)."""
    if not report_path:
        return {}
    if not os.path.exists(report_path):
        raise FileNotFoundError(f"no eval report at {report_path} (made by `sparrow eval`)")
    with open(report_path, encoding="utf-8") as f:
        per_rule = json.load(f).get("metrics", {}).get("per_rule") or {}
    return {rule: float(v["rate"]) for rule, v in per_rule.items()}


def focus_rules(rule_ids: Sequence[str], rates: Mapping[str, float], top: int = 5) -> tuple[str, ...]:
    """The `top` rules by violation rate (descending; rate 0 or unknown after, in file order)."""
    order = sorted(range(len(rule_ids)), key=lambda i: (-rates.get(rule_ids[i], 0.0), i))
    broken = [rule_ids[i] for i in order if rates.get(rule_ids[i], 0.0) > 0]
    chosen = broken[:top] if broken else list(rule_ids)
    return tuple(chosen)


def next_rule(focus: Sequence[str], probe_counts: Mapping[str, int]) -> str:
    """The focus rule with the fewest probes (first in focus order on ties)."""
    if not focus:
        raise ValueError("no rules to probe")
    return min(focus, key=lambda rule: (probe_counts.get(rule, 0), focus.index(rule)))
