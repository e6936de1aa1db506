"""Red-team probes (prompts with the `rule_id` they target) from public data.

A probe is a `prompts` record with source `red_team` and the rule it tries to make the
agent break; the evaluation judges the answer against that rule (README, "Evaluation
report"). Two sources:

* PKU-SafeRLHF: a prompt that drew an unsafe response is a probe for every rule the
  response's flagged harm categories map to (`converters.PKU_HARM_TO_RULES`, the table
  its rule ratings use; an unsafe response with no category: general_harm). Prompts whose
  responses were both safe are not probes (counted).
* Anthropic HH red-team attempts (`red_team_attempts.jsonl(.gz)`: a JSON array, or one
  object per line, with `transcript` and `tags`): the attempt's opening User turn is a
  probe for every rule its tags map to (`HH_RED_TEAM_TAG_TO_RULES` below).

Ids: `pku-<line>-probe-<rule>`, `hhrt-<index>-<rule>` (index from 1, in file order).
Tags or categories outside the maps are counted under "unmapped ..." and reported by
`sparrow data convert` / `prepare`, never silently dropped; an attempt whose every tag
is unmapped gives no probe.

HH red-team tags (Ganguli et al. 2022) -> rule ids:

  Hate speech & offensive language              -> no_hate_or_harassment
  Bullying & harassment                         -> no_hate_or_harassment
  Discrimination & injustice                    -> no_stereotypes
  Adult content                                 -> no_sexual_aggression
  Conspiracy theories & misinformation          -> no_conspiracy_theories
  Violence & incitement; Weapons; Theft; Fraud & deception; Property crime & vandalism;
  Terrorism & organized crime; Substance abuse & banned substances; Self-harm; Animal abuse;
  Child abuse; Sexual exploitation & human trafficking; Soliciting personally identifiable
  information; Non-violent unethical behavior (e.g. lying, cheating, etc.)
                                                -> general_harm
  N/A - Invalid attempt                         -> not a probe (counted)
  Other, or any tag not listed                  -> unmapped (counted and reported)
"""
from __future__ import annotations

import collections
import json
import os
from typing import Iterator

from sparrow_jax.data import converters, jsonl, schemas
from sparrow_jax.dialogue.turns import Role, Turn

HH_INVALID_TAG = "N/A - Invalid attempt"
HH_RED_TEAM_TAG_TO_RULES: dict[str, tuple[str, ...]] = {
    "Hate speech & offensive language": ("no_hate_or_harassment",),
    "Bullying & harassment": ("no_hate_or_harassment",),
    "Discrimination & injustice": ("no_stereotypes",),
    "Adult content": ("no_sexual_aggression",),
    "Conspiracy theories & misinformation": ("no_conspiracy_theories",),
    **{tag: ("general_harm",) for tag in (
        "Violence & incitement", "Weapons", "Theft", "Fraud & deception",
        "Property crime & vandalism", "Terrorism & organized crime",
        "Substance abuse & banned substances", "Self-harm", "Animal abuse", "Child abuse",
        "Sexual exploitation & human trafficking",
        "Soliciting personally identifiable information",
        "Non-violent unethical behavior (e.g. lying, cheating, etc.)")},
}
PROBE_RULES = tuple(dict.fromkeys(
    [r for rules in HH_RED_TEAM_TAG_TO_RULES.values() for r in rules]
    + [r for rules in converters.PKU_HARM_TO_RULES.values() for r in rules]))


def _probe(record_id: str, context, rule_id: str) -> schemas.PromptRecord:
    return schemas.PromptRecord(record_id, "red_team", tuple(context), rule_id=rule_id)


def pku_probes(path, counts: collections.Counter) -> Iterator[tuple[str, schemas.PromptRecord]]:
    """(group = the record's preference id, probe) for each PKU prompt that drew an unsafe response."""
    for line, obj in converters._json_lines(path):
        prompt = converters._field(obj, "prompt", str, path, line)
        rules: dict[str, None] = {}
        for i in (0, 1):
            if converters._field(obj, f"is_response_{i}_safe", bool, path, line):
                continue
            field = f"response_{i}_harm_category"
            flagged = converters._flagged(obj.get(field), path, line, field)
            for name in flagged:
                rules.update(dict.fromkeys(converters.PKU_HARM_TO_RULES[name]))
            if not flagged:
                rules["general_harm"] = None
        if not rules:
            counts["pku: both responses safe (not a probe)"] += 1
            continue
        context = (Turn(Role.USER, prompt),)
        for rule in rules:
            yield f"pku-{line}", _probe(f"pku-{line}-probe-{rule}", context, rule)


def _hh_attempts(path) -> Iterator[tuple[int, dict]]:
    """(index from 1, object) of a JSON array file or a JSONL file (optionally .gz)."""
    text = "\n".join(line for _, line in jsonl.text_lines(path, "HH red-team attempts"))
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise schemas.SchemaError(os.fspath(path), err.lineno, "<json>",
                                      f"malformed JSON: {err.msg}") from None
        except RecursionError:
            raise schemas.SchemaError(os.fspath(path), 1, "<json>", "nested too deeply") from None
        if not isinstance(items, list):
            raise schemas.SchemaError(os.fspath(path), 1, "<json>", "expected an array")
        for index, obj in enumerate(items, 1):  # index: the array item, counted from 1
            yield index, jsonl.check_object(obj, os.fspath(path), index)
    else:
        yield from converters._json_lines(path)


def hh_red_team_probes(path, counts: collections.Counter
                       ) -> Iterator[tuple[str, schemas.PromptRecord]]:
    """(group = the attempt's id, probe) for each mapped tag of each HH red-team attempt."""
    for index, obj in _hh_attempts(path):
        transcript = converters._field(obj, "transcript", str, path, index)
        tags = obj.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise schemas.SchemaError(os.fspath(path), index, "tags", "expected a list of strings or null")
        if HH_INVALID_TAG in tags:
            counts["hh red-team: invalid attempt (not a probe)"] += 1
            continue
        try:
            turns = converters.parse_hh_transcript(transcript)
        except ValueError as err:
            raise schemas.SchemaError(os.fspath(path), index, "transcript", str(err)) from None
        if turns[0].role is not Role.USER:
            raise schemas.SchemaError(os.fspath(path), index, "transcript", "does not open with Human:")
        rules: dict[str, None] = {}
        for tag in tags:
            if tag in HH_RED_TEAM_TAG_TO_RULES:
                rules.update(dict.fromkeys(HH_RED_TEAM_TAG_TO_RULES[tag]))
            else:
                counts[f"hh red-team: unmapped tag {tag!r}"] += 1
        if not tags:
            counts["hh red-team: unmapped: no tags"] += 1
        for rule in rules:
            yield f"hhrt-{index}", _probe(f"hhrt-{index}-{rule}", turns[:1], rule)


def probes(fmt: str, path, counts: collections.Counter) -> Iterator[tuple[str, schemas.PromptRecord]]:
    """(group, probe) of a "pku" or "hh-red-team" file; unmapped and skipped records counted."""
    if fmt == "pku":
        return pku_probes(path, counts)
    if fmt == "hh-red-team":
        return hh_red_team_probes(path, counts)
    raise ValueError(f"no probes from format {fmt!r}; expected pku or hh-red-team")
