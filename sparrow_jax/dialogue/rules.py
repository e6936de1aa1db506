"""Sparrow's rules as data: `resources/rules.jsonl`, one {"id", "name", "text", "category"} object a line."""
from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import os
from typing import Sequence

from sparrow_jax.data import jsonl

RULE_CATEGORIES = frozenset({"harm", "misinformation", "persona", "conversation"})
_FIELDS = ("id", "name", "text", "category")


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str  # stable identifier, used in data files (`rule_ratings.*.jsonl`) and configs
    name: str  # short human-readable name
    text: str  # the rule as shown to the rule RM and to raters
    category: str  # one of RULE_CATEGORIES


def _default_rules_text() -> tuple[str, str]:
    resource = importlib.resources.files("sparrow_jax") / "resources" / "rules.jsonl"
    return str(resource), resource.read_text(encoding="utf-8")


def load_rules(path: str | os.PathLike | None = None) -> tuple[Rule, ...]:
    """Rules in file order; default: the packaged 23 rules.

    Blank lines are skipped. Raises ValueError naming file, line and field on invalid JSON, a missing or
    unknown field, a field that is not a non-empty string, an unknown category, or a duplicate id.
    """
    if path is None:
        name, content = _default_rules_text()
        lines = ((n, jsonl.parse_object(line, name, n))
                 for n, line in enumerate(content.splitlines(), start=1) if line.strip())
    else:
        name = os.fspath(path)
        lines = jsonl.json_lines(name, "rules JSONL")
    rules: list[Rule] = []
    first_line_of: dict[str, int] = {}
    for line_number, obj in lines:
        where = f"{name}:{line_number}"
        unknown = sorted(set(obj) - set(_FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(_FIELDS)})")
        for field in _FIELDS:
            if field not in obj:
                raise ValueError(f"{where}: missing field {field!r}")
            if not isinstance(obj[field], str) or not obj[field].strip():
                raise ValueError(f"{where}: field {field!r} must be a non-empty string, got {obj[field]!r}")
        if obj["category"] not in RULE_CATEGORIES:
            raise ValueError(f"{where}: field 'category' is {obj['category']!r}, expected one of "
                             f"{sorted(RULE_CATEGORIES)}")
        if obj["id"] in first_line_of:
            raise ValueError(f"{where}: field 'id': duplicate id {obj['id']!r} "
                             f"(first on line {first_line_of[obj['id']]})")
        first_line_of[obj["id"]] = line_number
        rules.append(Rule(**{field: obj[field] for field in _FIELDS}))
    if not rules:
        raise ValueError(f"{name}: the rules file has no rules (one JSON object per line: "
                         f"{', '.join(_FIELDS)})")
    return tuple(rules)


def get_rule(rules: Sequence[Rule], rule_id: str) -> Rule:
    """The rule with `rule_id`; KeyError naming the unknown id (and the closest known ids) otherwise."""
    for rule in rules:
        if rule.id == rule_id:
            return rule
    close = difflib.get_close_matches(str(rule_id), [rule.id for rule in rules], n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise KeyError(f"unknown rule id {rule_id!r} ({len(rules)} rules known){hint}")
