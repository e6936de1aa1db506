"""How far the reward-model judge is from a reference judge (the toy world's oracle) on the same answers.

    sparrow eval --workdir W --judge oracle --out A
    sparrow eval --workdir W --judge reward_models --out B     # same seed: the same answers
    python -m sparrow_jax.evaluation.judge_agreement A B [--json]

Reads both reports' answers.jsonl (one line per prompt with its dialogue and verdict), refuses two
evaluations whose dialogues differ (exit 2), and prints, per probed rule and over all probes: n, the
reference's violation rate with its 95% Wilson interval, the other judge's rate, whether that rate is
inside the interval, and on how many dialogues the two verdicts agree. The same for supported &
correct on factual questions. A rate inside a wide interval (a rule probed 3 times) says little on
its own; the agreement count is the per-dialogue check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from sparrow_jax.evaluation.metrics import wilson_interval

ALL_PROBES = "(all probes)"


class DifferentAnswers(ValueError):
    """The two evaluations answered different prompts or answered them differently."""


def read_answers(report_dir: str) -> list[dict]:
    with open(os.path.join(report_dir, "answers.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _row(name: str, pairs: Sequence[tuple[bool, bool]]) -> dict:
    n = len(pairs)
    hits = sum(ref for ref, _ in pairs)
    other = sum(judged for _, judged in pairs)
    low, high = wilson_interval(hits, n)
    rate = other / n
    return {"name": name, "n": n, "reference_rate": hits / n, "low": low, "high": high,
            "judged_rate": rate, "inside": bool(low <= rate <= high),
            "agree": sum(ref == judged for ref, judged in pairs)}


def compare(reference: Sequence[dict], judged: Sequence[dict]) -> dict:
    """{"rules": [row per probed rule, then all probes], "supported": row or None}: rows over the
    prompts both judges could judge (a verdict that is None on either side is left out)."""
    if [(a["id"], a["dialogue"]) for a in reference] != [(a["id"], a["dialogue"]) for a in judged]:
        raise DifferentAnswers("the two evaluations' answers differ (another policy, seed, step or "
                               "sampling setting): judge the same answers (same flags but --judge)")
    by_rule: dict[str, list] = {}
    supported = []
    for ref, other in zip(reference, judged):
        if ref["violated"] is not None and other["violated"] is not None:
            by_rule.setdefault(ref["rule_id"], []).append((ref["violated"], other["violated"]))
        if ref["supported"] is not None and other["supported"] is not None:
            supported.append((ref["supported"], other["supported"]))
    rows = [_row(rule, by_rule[rule]) for rule in sorted(by_rule)]
    everything = [pair for rule in sorted(by_rule) for pair in by_rule[rule]]
    if everything:
        rows.append(_row(ALL_PROBES, everything))
    return {"rules": rows, "supported": _row("supported & correct", supported) if supported else None}


def markdown(result: dict, reference: str = "oracle", judged: str = "RM judge") -> str:
    lines = [f"| rule | n | {reference} rate [95% Wilson] | {judged} rate | inside? | same verdict |",
             "|---|---:|---|---:|:---:|---:|"]
    rows = result["rules"] + ([result["supported"]] if result["supported"] else [])
    for row in rows:
        lines.append(f"| {row['name']} | {row['n']} | {row['reference_rate']:.3f} [{row['low']:.3f}, "
                     f"{row['high']:.3f}] | {row['judged_rate']:.3f} | "
                     f"{'yes' if row['inside'] else 'NO'} | {row['agree']}/{row['n']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparrow_jax.evaluation.judge_agreement",
        description="compare a judge's per-rule violation rates with a reference judge's 95%% intervals "
                    "on the same answers (two `sparrow eval --out` directories)")
    parser.add_argument("reference", help="report dir judged by the reference (e.g. --judge oracle)")
    parser.add_argument("judged", help="report dir of the same answers judged by --judge reward_models")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args(argv)
    try:
        result = compare(read_answers(args.reference), read_answers(args.judged))
    except (OSError, ValueError, KeyError) as err:
        print(f"judge_agreement: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
