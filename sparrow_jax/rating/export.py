"""`sparrow rate export`: the judgements as the JSONL the pref_rm and rule_rm stages read.

Writes to OUT:
  preferences.{train,test}.jsonl   one PreferenceRecord per comparison judgement that picked a candidate
                                   (id `<item>.r<rater>`; "none acceptable" has no PreferenceRecord form and
                                   is counted in stats.json instead); supported and plausible per
                                   evidence candidate (the pref RM's auxiliary target needs both);
  rule_ratings.{train,test}.jsonl  one RuleRatingRecord per probe turn rated broken / not broken for the
                                   probe's rule (the dialogue up to that agent turn), plus broken=True for
                                   each other rule the rater flagged on that turn; "unsure" is counted only;
  stats.json                       counts, rater agreement on doubly rated items, per-rule counts.
Every record keeps where it came from under "rating" (rater, task, checkpoint, step, sampling, times).
The split is by item / probe (a hash of its id), so the two ratings of an item land in one split; a split
with no record gets no file.
Records are checked with the readers of data/schemas.py before anything is written.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
from typing import Iterable, Sequence

from sparrow_jax.data.jsonl import atomic_write
from sparrow_jax.data.schemas import record_from_json, write_jsonl

SPLITS = ("train", "test")


def split_of(key: str, test_share: float) -> str:
    """"test" for a `test_share` fraction of keys (deterministic), else "train"."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "test" if digest / 2.0 ** 64 < test_share else "train"


def assign_splits(keys: Iterable[str], test_share: float) -> dict[str, str]:
    """{key: split} by `split_of`; when one split would be empty and the other holds two or more keys,
    the key nearest the boundary moves over (a stage needs both splits; tfds cannot build an empty one)."""
    keys = sorted(set(keys), key=lambda k: hashlib.sha256(k.encode()).digest())  # hash order
    splits = {k: split_of(k, test_share) for k in keys}
    if len(keys) >= 2 and test_share > 0:
        tests = [k for k in keys if splits[k] == "test"]
        if not tests:
            splits[keys[0]] = "test"       # the smallest hash: nearest to the test side
        elif len(tests) == len(keys):
            splits[keys[-1]] = "train"
    return splits


def _provenance(row: dict, task: str) -> dict:
    return {"rater": row["rater_id"], "task": task, "checkpoint": row["checkpoint"], "step": row["step"],
            "sampling": row["sampling"], "created_at": row["created_at"], "updated_at": row["updated_at"]}


def preference_objects(items: dict[str, dict], judgements: Iterable[dict]) -> list[tuple[str, dict]]:
    """(split key, preference JSON) per judgement that chose a candidate."""
    out = []
    for j in judgements:
        if j["chosen"] < 0:
            continue
        item = items[j["item_id"]]
        supported = [s if e else None for s, e in zip(j["supported"], item["has_evidence"])]
        plausible = [p if e else None for p, e in zip(j["plausible"], item["has_evidence"])]
        obj = {"id": f"{item['id']}.r{j['rater_id']}", "context": item["context"],
               "candidates": item["candidates"], "chosen": j["chosen"],
               "has_evidence": item["has_evidence"], "supported": supported, "plausible": plausible,
               "rating": _provenance(j, "comparison")}
        out.append((item["id"], obj))
    return out


def rule_objects(probes: dict[int, dict], ratings: Iterable[dict]) -> list[tuple[str, dict]]:
    """(split key, rule-rating JSON) per decided verdict and per flagged other rule."""
    out = []
    for r in ratings:
        probe = probes[r["probe_id"]]
        dialogue = probe["dialogue"][:r["turn_index"] + 1]
        base = f"probe{probe['id']}.t{r['turn_index']}.r{r['rater_id']}"
        key = f"probe{probe['id']}"
        if r["verdict"] != "unsure":
            out.append((key, {"id": f"{base}.{r['rule_id']}", "dialogue": dialogue, "rule_id": r["rule_id"],
                              "broken": r["verdict"] == "broken", "rating": _provenance(r, r["task"])}))
        for rule in r["other_rules"]:
            if rule != r["rule_id"]:
                out.append((key, {"id": f"{base}.{rule}", "dialogue": dialogue, "rule_id": rule,
                                  "broken": True, "rating": _provenance(r, r["task"] + "_flag")}))
    return out


def _pair_agreement(groups: Iterable[Sequence]) -> dict:
    """Share of rater pairs that agree, over groups of two or more answers of one item."""
    pairs = agree = items = 0
    for answers in groups:
        if len(answers) < 2:
            continue
        items += 1
        for a, b in itertools.combinations(answers, 2):
            pairs += 1
            agree += int(a == b)
    return {"items": items, "pairs": pairs, "agreement": agree / pairs if pairs else None}


def agreement(items: dict[str, dict], judgements: Sequence[dict], ratings: Sequence[dict]) -> dict:
    """Agreement on items judged by two or more raters: chosen candidate, supported per evidence
    candidate, and probe turn verdicts (those rated by more than one rater)."""
    chosen, supported, verdicts = (collections.defaultdict(list) for _ in range(3))
    for j in judgements:
        chosen[j["item_id"]].append(j["chosen"])
        for k, (s, e) in enumerate(zip(j["supported"], items[j["item_id"]]["has_evidence"])):
            if e and s is not None:
                supported[(j["item_id"], k)].append(s)
    for r in ratings:
        verdicts[(r["probe_id"], r["turn_index"])].append(r["verdict"])
    return {"chosen": _pair_agreement(chosen.values()), "supported": _pair_agreement(supported.values()),
            "probe_verdict": _pair_agreement(verdicts.values())}


def per_rule_counts(ratings: Iterable[dict]) -> dict[str, dict[str, int]]:
    """{rule: {broken, not_broken, unsure, flagged}} over probe ratings."""
    counts: dict[str, dict[str, int]] = collections.defaultdict(
        lambda: {"broken": 0, "not_broken": 0, "unsure": 0, "flagged": 0})
    for r in ratings:
        counts[r["rule_id"]][r["verdict"]] += 1
        for rule in r["other_rules"]:
            counts[rule]["flagged"] += 1
    return dict(sorted(counts.items()))


def export(store, out_dir: str, test_share: float = 0.1, rule_ids=None) -> dict:
    """Write the module docstring's files to `out_dir`; returns stats.json's dict."""
    if not 0.0 <= test_share < 1.0:
        raise ValueError(f"test_share must be in [0, 1), got {test_share}")
    items = {item["id"]: item for item in store.items()}
    judgements = store.comparisons()
    probes = {p["id"]: p for p in store.probes()}
    ratings = store.probe_ratings()
    records = {"preferences": preference_objects(items, judgements),
               "rule_ratings": rule_objects(probes, ratings)}
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for kind, objects in records.items():
        by_split = {split: [] for split in SPLITS}
        splits = assign_splits((key for key, _ in objects), test_share)
        for key, obj in objects:
            # raises SchemaError on a record the training stages could not read
            by_split[splits[key]].append(record_from_json(kind, obj, rule_ids))
        for split, recs in by_split.items():
            path = os.path.join(out_dir, f"{kind}.{split}.jsonl")
            if os.path.exists(path):
                os.remove(path)  # never leave an older export's file beside this one
            if recs:  # an empty file would not build (tfds); its absence says "no data"
                written[f"{kind}.{split}"] = write_jsonl(path, recs)
    stats = {"written": written, "comparisons": len(judgements),
             "none_acceptable": sum(j["chosen"] < 0 for j in judgements),
             "probe_ratings": len(ratings), "unsure": sum(r["verdict"] == "unsure" for r in ratings),
             "raters": len({j["rater_id"] for j in judgements} | {r["rater_id"] for r in ratings}),
             "agreement": agreement(items, judgements, ratings), "per_rule": per_rule_counts(ratings)}
    with atomic_write(os.path.join(out_dir, "stats.json")) as f:
        json.dump(stats, f, indent=2)
    return stats
