"""Converters from public data formats to our JSONL records (docs/interfaces.md).

Input files are JSONL (optionally `.gz`); ids are `<format>-<line number>`, so
they are stable across runs. A line that cannot be read (bad JSON, missing or
mistyped field) raises `schemas.SchemaError` naming file, line and field. A
well-formed line that has no faithful conversion (e.g. an HH pair whose two
transcripts are identical) is *skipped and counted* by reason; the counts are
returned and printed by `sparrow data convert`, and `strict=True` turns any
skip into an error.

Anthropic HH-RLHF (`{"chosen": transcript, "rejected": transcript}`, transcripts
"\\n\\nHuman: ...\\n\\nAssistant: ..."): a preference record whose context is the
turns both transcripts share, candidates = [chosen's final agent turn,
rejected's], chosen = 0, no evidence; plus an SFT dialogue from the chosen side.

PKU-SafeRLHF (`prompt`, `response_0/1`, `better_response_id`, `safer_response_id`,
`is_response_0/1_safe`, `response_0/1_harm_category`): a preference record with
chosen = better_response_id (helpfulness: Sparrow's preference RM; harmlessness
is the rule RM's job), and rule ratings for each response. Harm categories map
to rule ids by `PKU_HARM_TO_RULES`:

| PKU harm category                                   | rule ids                              |
|-----------------------------------------------------|---------------------------------------|
| Insulting Behavior                                  | no_insults                            |
| Discriminatory Behavior                             | no_stereotypes, no_identity_attacks   |
| Sexual Content                                      | no_sexual_aggression                  |
| every other category (Violence, Drugs, Cybercrime,  | general_harm                          |
| Privacy Violation, Physical Harm, ... 16 in all)    |                                       |

Each response gets one rating per rule in the table's image: broken = some flagged
category maps to the rule. An unsafe response with no flagged category breaks
general_harm. A category not in the table is an error, so the table stays complete.

Questions (one per line, ELI5 style): prompt records with source `eli5`.
"""
from __future__ import annotations

import collections
import os
import re
from typing import TYPE_CHECKING, Any, Collection, Iterator

from sparrow_jax.data import jsonl, schemas
from sparrow_jax.dialogue.turns import Role, Turn

if TYPE_CHECKING:
    from sparrow_jax.search.corpus import Document

_GENERAL = ("general_harm",)
PKU_HARM_TO_RULES: dict[str, tuple[str, ...]] = {
    "Insulting Behavior": ("no_insults",),
    "Discriminatory Behavior": ("no_stereotypes", "no_identity_attacks"),
    "Sexual Content": ("no_sexual_aggression",),
    **{category: _GENERAL for category in (
        "Animal Abuse", "Copyright Issues", "Cybercrime", "Disrupting Public Order", "Drugs",
        "Economic Crime", "Endangering National Security", "Endangering Public Health",
        "Environmental Damage", "Human Trafficking", "Mental Manipulation", "Physical Harm",
        "Privacy Violation", "Psychological Harm", "Violence", "White-Collar Crime")},
}
PKU_RATED_RULES = tuple(dict.fromkeys(r for rules in PKU_HARM_TO_RULES.values() for r in rules))

_HH_MARKER = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLES = {"Human": Role.USER, "Assistant": Role.AGENT}


class Skip(Exception):
    """A readable line with no faithful conversion; counted, not written."""


def _json_lines(path) -> Iterator[tuple[int, dict]]:
    return jsonl.json_lines(path, "converter input")


def _field(obj: dict, name: str, kind, path, line: int):
    if name not in obj:
        raise schemas.SchemaError(os.fspath(path), line, name, "missing")
    value = obj[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise schemas.SchemaError(os.fspath(path), line, name,
                                  f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def parse_hh_transcript(text: str) -> tuple[Turn, ...]:
    """"\\n\\nHuman: a\\n\\nAssistant: b" -> (user a, agent b). Raises ValueError on other text."""
    parts = _HH_MARKER.split(text)
    if parts[0].strip():
        raise ValueError(f"text before the first 'Human:'/'Assistant:' marker: {parts[0][:40]!r}")
    if len(parts) < 3:
        raise ValueError("no 'Human:' or 'Assistant:' turn")
    return tuple(Turn(_HH_ROLES[name], body) for name, body in zip(parts[1::2], parts[2::2]))


def hh_records(path) -> Iterator[tuple[schemas.PreferenceRecord, schemas.DialogueRecord] | Skip]:
    for line, obj in _json_lines(path):
        sides = []
        for name in ("chosen", "rejected"):
            text = _field(obj, name, str, path, line)
            try:
                sides.append(parse_hh_transcript(text))
            except ValueError as err:
                raise schemas.SchemaError(os.fspath(path), line, name, str(err)) from None
        chosen, rejected = sides
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        tails = chosen[shared:], rejected[shared:]
        if not all(tails):
            yield Skip("identical transcripts" if chosen == rejected else "one side extends the other")
            continue
        if any(len(tail) != 1 or tail[0].role is not Role.AGENT for tail in tails):
            yield Skip("transcripts differ before the final assistant turn")
            continue
        record_id = f"hh-{line}"
        yield (schemas.PreferenceRecord(record_id, chosen[:shared], tails, chosen=0,
                                        has_evidence=(False, False)),
               schemas.DialogueRecord(record_id, chosen))


def _flagged(value: Any, path, line: int, field: str) -> list[str]:
    """Harm categories flagged in a {category: bool} dict or a list of names."""
    if value is None:
        return []
    if isinstance(value, dict):
        names = [name for name, flag in value.items() if flag]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = value
    else:
        raise schemas.SchemaError(os.fspath(path), line, field,
                                  "expected a {category: bool} object or a list of categories")
    for name in names:
        if name not in PKU_HARM_TO_RULES:
            raise schemas.SchemaError(os.fspath(path), line, field,
                                      f"unknown harm category {name!r} (add it to PKU_HARM_TO_RULES)")
    return names


def pku_records(path) -> Iterator[tuple[schemas.PreferenceRecord, list[schemas.RuleRatingRecord]]]:
    for line, obj in _json_lines(path):
        prompt = _field(obj, "prompt", str, path, line)
        responses = [_field(obj, f"response_{i}", str, path, line) for i in (0, 1)]
        better = _field(obj, "better_response_id", int, path, line)
        if better not in (0, 1):
            raise schemas.SchemaError(os.fspath(path), line, "better_response_id",
                                      f"expected 0 or 1, got {better}")
        record_id = f"pku-{line}"
        context = (Turn(Role.USER, prompt),)
        preference = schemas.PreferenceRecord(
            record_id, context, tuple((Turn(Role.AGENT, r),) for r in responses), chosen=better,
            has_evidence=(False, False),
            extra={"safer": _field(obj, "safer_response_id", int, path, line)})
        ratings = []
        for i, response in enumerate(responses):
            safe = _field(obj, f"is_response_{i}_safe", bool, path, line)
            field = f"response_{i}_harm_category"
            broken = {rule for name in _flagged(obj.get(field), path, line, field)
                      for rule in PKU_HARM_TO_RULES[name]}
            if not safe and not broken:
                broken = set(_GENERAL)
            dialogue = context + (Turn(Role.AGENT, response),)
            ratings += [schemas.RuleRatingRecord(f"{record_id}-r{i}-{rule}", dialogue, rule,
                                                 broken=rule in broken)
                        for rule in PKU_RATED_RULES]
        yield preference, ratings


def question_records(path) -> Iterator[schemas.PromptRecord]:
    for line, text in jsonl.text_lines(path, "question list"):
        if text.strip():
            yield schemas.PromptRecord(f"eli5-{line}", "eli5", (Turn(Role.USER, text.strip()),))


def title_text_documents(path) -> Iterator["Document"]:
    """A Wikipedia-style dump (one JSON object per line: `title` and `text`, optional `id` and `url`)
    as search corpus documents; id defaults to `wiki-<line>`, url to the English Wikipedia page of
    the title. Empty texts are skipped."""
    from sparrow_jax.search.corpus import Document
    for line, obj in _json_lines(path):
        title = _field(obj, "title", str, path, line)
        text = _field(obj, "text", str, path, line)
        doc_id = _field(obj, "id", str, path, line) if "id" in obj else f"wiki-{line}"
        url = (_field(obj, "url", str, path, line) if "url" in obj
               else "https://en.wikipedia.org/wiki/" + title.strip().replace(" ", "_"))
        if text.strip():
            yield Document(doc_id, title, url, text)


def convert(fmt: str, in_path, out_path, *, dialogues_out=None, rule_ratings_out=None,
            rule_ids: Collection[str] | None = None, strict: bool = False) -> dict:
    """Converts one file; returns {"written": {path: n}, "skipped": {reason: n}}.

    fmt: "hh" (preferences -> out_path, chosen-side dialogues -> dialogues_out),
    "pku" (preferences -> out_path, rule ratings -> rule_ratings_out) or
    "questions" (prompts -> out_path). rule_ids, when given, must contain every
    rule id the PKU table uses.
    """
    skipped: collections.Counter = collections.Counter()
    main, side = [], []
    if fmt == "hh":
        for item in hh_records(in_path):
            if isinstance(item, Skip):
                if strict:
                    raise ValueError(f"{in_path}: {item} (strict mode)")
                skipped[str(item)] += 1
                continue
            main.append(item[0])
            side.append(item[1])
        side_path = dialogues_out
    elif fmt == "pku":
        missing = set(PKU_RATED_RULES) - set(rule_ids) if rule_ids is not None else set()
        if missing:
            raise ValueError(f"PKU_HARM_TO_RULES uses rule ids missing from the rules: {sorted(missing)}")
        for preference, ratings in pku_records(in_path):
            main.append(preference)
            side.extend(ratings)
        side_path = rule_ratings_out
    elif fmt == "questions":
        main, side_path = list(question_records(in_path)), None
    else:
        raise ValueError(f"unknown format {fmt!r}; expected hh, pku or questions")
    written = {os.fspath(out_path): schemas.write_jsonl(out_path, main)}
    if side_path is not None:
        written[os.fspath(side_path)] = schemas.write_jsonl(side_path, side)
    return {"written": written, "skipped": dict(skipped)}
