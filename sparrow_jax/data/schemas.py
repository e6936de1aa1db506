"""Typed records for the JSONL data files, and strict readers for them.

The file formats are specified in docs/interfaces.md ("Data files"). Every
reader validates each line and raises `SchemaError` (a `ValueError`) naming the
file, the line number (1-based) and the offending field, e.g.

    preferences.train.jsonl:12: field 'candidates[1][0].role': unknown role 'bot'

Nothing is ever dropped silently: a bad line is an error, not a skip. Blank
lines carry no record and are skipped. Top-level fields the schema does not
know are kept in `Record.extra` and written back by `to_json`, so converting
or rebuilding a file never loses information.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Collection, Iterator, Mapping

from sparrow_jax.data import jsonl
from sparrow_jax.dialogue.turns import Dialogue, Role, Turn

PROMPT_SOURCES = ("eli5", "human", "red_team")
KINDS = ("corpus", "dialogues", "preferences", "rule_ratings", "prompts")


SchemaError = jsonl.SchemaError  # (path, line, field, message); raised by every reader


class _FieldError(Exception):
    """Raised while parsing one object; the reader adds file and line."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


# ----------------------------------------------------------------------------- records

@dataclasses.dataclass(frozen=True)
class CorpusDoc:
    id: str
    title: str
    url: str
    text: str
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "url": self.url, "text": self.text, **self.extra}


@dataclasses.dataclass(frozen=True)
class DialogueRecord:
    id: str
    turns: Dialogue
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "turns": _turns_json(self.turns), **self.extra}


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
    """K candidate continuations of `context`; `chosen` indexes `candidates`."""
    id: str
    context: Dialogue
    candidates: tuple[Dialogue, ...]
    chosen: int
    has_evidence: tuple[bool, ...]
    supported: tuple[bool | None, ...] | None = None
    plausible: tuple[bool | None, ...] | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        obj = {"id": self.id, "context": _turns_json(self.context),
               "candidates": [_turns_json(c) for c in self.candidates],
               "chosen": self.chosen, "has_evidence": list(self.has_evidence)}
        if self.supported is not None:
            obj["supported"] = list(self.supported)
        if self.plausible is not None:
            obj["plausible"] = list(self.plausible)
        return {**obj, **self.extra}


@dataclasses.dataclass(frozen=True)
class RuleRatingRecord:
    id: str
    dialogue: Dialogue
    rule_id: str
    broken: bool
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "dialogue": _turns_json(self.dialogue), "rule_id": self.rule_id,
                "broken": self.broken, **self.extra}


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    id: str
    source: str
    context: Dialogue
    rule_id: str | None = None
    entity: str | None = None
    attribute: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        obj = {"id": self.id, "source": self.source, "context": _turns_json(self.context)}
        for name in ("rule_id", "entity", "attribute"):
            if getattr(self, name) is not None:
                obj[name] = getattr(self, name)
        return {**obj, **self.extra}


Record = CorpusDoc | DialogueRecord | PreferenceRecord | RuleRatingRecord | PromptRecord


def _turns_json(turns: Dialogue) -> list[dict]:
    return [turn.to_json() for turn in turns]


# ----------------------------------------------------------------------------- field parsers

def _get(obj: Mapping, name: str, kind: type | tuple, prefix: str = "", optional: bool = False):
    field = prefix + name
    if name not in obj or (optional and obj[name] is None):
        if optional:
            return None
        raise _FieldError(field, "missing")
    value = obj[name]
    # bool is an int subclass: never accept it where a number is expected, or vice versa.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise _FieldError(field, f"expected {_type_names(kind)}, got {type(value).__name__}")
    return value


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_names(kind) -> str:
    return "|".join(k.__name__ for k in _as_tuple(kind))


def _parse_turns(value: Any, field: str) -> Dialogue:
    if not isinstance(value, list):
        raise _FieldError(field, f"expected a list of turns, got {type(value).__name__}")
    turns = []
    for i, turn in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise _FieldError(where, f"expected an object, got {type(turn).__name__}")
        role = _get(turn, "role", str, where + ".")
        try:
            role = Role(role)
        except ValueError:
            raise _FieldError(where + ".role", f"unknown role {role!r} "
                              f"(expected one of {[r.value for r in Role]})") from None
        turns.append(Turn(role, _get(turn, "text", str, where + ".")))
    return tuple(turns)


def _bool_list(obj: Mapping, name: str, length: int, allow_none: bool, optional: bool):
    value = _get(obj, name, list, optional=optional)
    if value is None:
        return None
    if len(value) != length:
        raise _FieldError(name, f"has {len(value)} entries but there are {length} candidates")
    for i, item in enumerate(value):
        if not (isinstance(item, bool) or (allow_none and item is None)):
            raise _FieldError(f"{name}[{i}]", f"expected bool{'|null' if allow_none else ''}, "
                              f"got {type(item).__name__}")
    return tuple(value)


def _check_rule(rule_id: str, field: str, rule_ids: Collection[str] | None) -> str:
    if rule_ids is not None and rule_id not in rule_ids:
        raise _FieldError(field, f"unknown rule id {rule_id!r} (known: {sorted(rule_ids)})")
    return rule_id


def _extra(obj: Mapping, known: Collection[str]) -> dict:
    return {k: v for k, v in obj.items() if k not in known}


def parse_corpus(obj: Mapping, rule_ids=None) -> CorpusDoc:
    names = ("id", "title", "url", "text")
    return CorpusDoc(*(_get(obj, n, str) for n in names), extra=_extra(obj, names))


def parse_dialogue(obj: Mapping, rule_ids=None) -> DialogueRecord:
    turns = _parse_turns(_get(obj, "turns", list), "turns")
    if not turns:
        raise _FieldError("turns", "empty dialogue")
    return DialogueRecord(_get(obj, "id", str), turns, extra=_extra(obj, ("id", "turns")))


def parse_preference(obj: Mapping, rule_ids=None) -> PreferenceRecord:
    context = _parse_turns(_get(obj, "context", list), "context")
    raw = _get(obj, "candidates", list)
    if not raw:
        raise _FieldError("candidates", "no candidates")
    candidates = tuple(_parse_turns(c, f"candidates[{i}]") for i, c in enumerate(raw))
    for i, candidate in enumerate(candidates):
        if not candidate or candidate[-1].role is not Role.AGENT:
            raise _FieldError(f"candidates[{i}]", "a candidate must end with an agent turn")
    chosen = _get(obj, "chosen", int)
    if not 0 <= chosen < len(candidates):
        raise _FieldError("chosen", f"index {chosen} out of range for {len(candidates)} candidates")
    k = len(candidates)
    return PreferenceRecord(
        id=_get(obj, "id", str), context=context, candidates=candidates, chosen=chosen,
        has_evidence=_bool_list(obj, "has_evidence", k, allow_none=False, optional=False),
        supported=_bool_list(obj, "supported", k, allow_none=True, optional=True),
        plausible=_bool_list(obj, "plausible", k, allow_none=True, optional=True),
        extra=_extra(obj, ("id", "context", "candidates", "chosen", "has_evidence",
                           "supported", "plausible")))


def parse_rule_rating(obj: Mapping, rule_ids=None) -> RuleRatingRecord:
    dialogue = _parse_turns(_get(obj, "dialogue", list), "dialogue")
    if not dialogue:
        raise _FieldError("dialogue", "empty dialogue")
    return RuleRatingRecord(
        id=_get(obj, "id", str), dialogue=dialogue,
        rule_id=_check_rule(_get(obj, "rule_id", str), "rule_id", rule_ids),
        broken=_get(obj, "broken", bool),
        extra=_extra(obj, ("id", "dialogue", "rule_id", "broken")))


def parse_prompt(obj: Mapping, rule_ids=None) -> PromptRecord:
    source = _get(obj, "source", str)
    if source not in PROMPT_SOURCES:
        raise _FieldError("source", f"unknown source {source!r} (expected one of {PROMPT_SOURCES})")
    rule_id = _get(obj, "rule_id", str, optional=True)
    return PromptRecord(
        id=_get(obj, "id", str), source=source,
        context=_parse_turns(_get(obj, "context", list), "context"),
        rule_id=None if rule_id is None else _check_rule(rule_id, "rule_id", rule_ids),
        entity=_get(obj, "entity", str, optional=True),
        attribute=_get(obj, "attribute", str, optional=True),
        extra=_extra(obj, ("id", "source", "context", "rule_id", "entity", "attribute")))


PARSERS: dict[str, Callable[..., Record]] = {
    "corpus": parse_corpus, "dialogues": parse_dialogue, "preferences": parse_preference,
    "rule_ratings": parse_rule_rating, "prompts": parse_prompt,
}


# ----------------------------------------------------------------------------- readers

def parse_line(line: str, kind: str, path: str = "<string>", line_number: int = 1,
               rule_ids: Collection[str] | None = None) -> Record:
    """Parses one JSONL line into a record of `kind`; raises SchemaError."""
    return parse_object(jsonl.parse_object(line, path, line_number), kind, path, line_number,
                        rule_ids)


def parse_object(obj: dict, kind: str, path: str, line_number: int,
                 rule_ids: Collection[str] | None = None) -> Record:
    """A parsed JSONL object -> a record of `kind`; raises SchemaError."""
    try:
        return PARSERS[kind](obj, rule_ids)
    except _FieldError as err:
        raise SchemaError(path, line_number, err.field, err.message) from None


def read_jsonl(path: str | os.PathLike, kind: str | None = None,
               rule_ids: Collection[str] | None = None) -> Iterator[Record]:
    """Yields the records of one JSONL file, validating every line.

    `kind` defaults to the one in the file name (see `kind_of`). `rule_ids`, when
    given, is the set of valid rule ids (e.g. from the rules file); rule ids are
    then checked in rule ratings and prompts. Duplicate ids are an error.
    """
    path = os.fspath(path)
    kind = kind or kind_of(path)
    if kind not in PARSERS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {KINDS}")
    seen: dict[str, int] = {}
    for line_number, obj in jsonl.json_lines(path, f"{kind} JSONL"):
        record = parse_object(obj, kind, path, line_number, rule_ids)
        if record.id in seen:
            raise SchemaError(path, line_number, "id",
                              f"duplicate id {record.id!r} (first on line {seen[record.id]})")
        seen[record.id] = line_number
        yield record


def read_all(path: str | os.PathLike, kind: str | None = None,
             rule_ids: Collection[str] | None = None) -> list[Record]:
    return list(read_jsonl(path, kind, rule_ids))


def write_jsonl(path: str | os.PathLike, records) -> int:
    """Writes records (or plain dicts) one per line, all or nothing (`jsonl.atomic_write`);
    returns the count."""
    count = 0
    with jsonl.atomic_write(path) as f:
        for record in records:
            obj = record if isinstance(record, dict) else record.to_json()
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1
    return count


def kind_of(path: str | os.PathLike) -> str:
    """The data kind named by a file name: `preferences.train.jsonl` -> `preferences`."""
    stem = os.path.basename(os.fspath(path)).split(".")[0]
    if stem not in PARSERS:
        raise ValueError(f"{path}: cannot tell the data kind from the file name; "
                         f"expected it to start with one of {KINDS}")
    return stem


def record_from_json(kind: str, obj: Mapping, rule_ids: Collection[str] | None = None) -> Record:
    """Parses an already-decoded object (e.g. read back from TFDS)."""
    try:
        return PARSERS[kind](obj, rule_ids)
    except _FieldError as err:
        raise SchemaError("<record>", 0, err.field, err.message) from None
