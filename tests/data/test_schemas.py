"""Schema readers: good files round-trip; every kind of bad line names file, line and field."""
import json
import os

import pytest

from sparrow_jax.data import schemas
from sparrow_jax.data.schemas import SchemaError

RULE_IDS = {"no_insults", "general_harm"}
TURNS = [{"role": "user", "text": "hi"}, {"role": "agent", "text": "hello"}]
GOOD = {
    "corpus": {"id": "c", "title": "T", "url": "u", "text": "x"},
    "dialogues": {"id": "d", "turns": TURNS},
    "preferences": {"id": "p", "context": TURNS[:1], "candidates": [TURNS[1:], TURNS[1:]], "chosen": 1,
                    "has_evidence": [False, False], "supported": [True, None]},
    "rule_ratings": {"id": "r", "dialogue": TURNS, "rule_id": "no_insults", "broken": False},
    "prompts": {"id": "q", "source": "red_team", "context": TURNS[:1], "rule_id": "general_harm"},
}


def _write(tmp_path, kind, objects):
    path = tmp_path / f"{kind}.train.jsonl"
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects))
    return str(path)


@pytest.mark.parametrize("kind", schemas.KINDS)
def test_round_trip(tmp_path, kind):
    obj = {**GOOD[kind], "note": "extra fields survive"}
    path = _write(tmp_path, kind, [obj, ""])  # a blank line is not a record
    (record,) = schemas.read_all(path, rule_ids=RULE_IDS)
    assert record.to_json() == obj
    out = tmp_path / "out.jsonl"
    schemas.write_jsonl(out, [record])
    assert schemas.read_all(out, kind) == [record]



BAD_CASES = [
    # kind, good object changes (None deletes), expected field
    ("dialogues", "{not json", "<json>"),
    ("dialogues", "[1, 2]", "<json>"),
    ("dialogues", {"turns": None}, "turns"),
    ("dialogues", {"id": 3}, "id"),
    ("dialogues", {"turns": [{"role": "bot", "text": "x"}]}, "turns[0].role"),
    ("dialogues", {"turns": [{"role": "user"}]}, "turns[0].text"),
    ("rule_ratings", {"rule_id": "no_jokes"}, "rule_id"),
    ("rule_ratings", {"broken": 1}, "broken"),
    ("prompts", {"rule_id": "no_jokes"}, "rule_id"),
    ("prompts", {"source": "reddit"}, "source"),
    ("preferences", {"chosen": 2}, "chosen"),
    ("preferences", {"chosen": -1}, "chosen"),
    ("preferences", {"chosen": True}, "chosen"),
    ("preferences", {"has_evidence": [False]}, "has_evidence"),
    ("preferences", {"supported": [True]}, "supported"),
    ("preferences", {"has_evidence": [False, None]}, "has_evidence[1]"),
    ("preferences", {"candidates": [TURNS[1:], [{"role": "oracle", "text": "x"}]]},
     "candidates[1][0].role"),
    ("preferences", {"candidates": [TURNS[1:], TURNS[:1]]}, "candidates[1]"),
    ("corpus", {"url": None}, "url"),
]


@pytest.mark.parametrize("kind, change, field", BAD_CASES)
def test_bad_line_names_file_line_and_field(tmp_path, kind, change, field):
    if isinstance(change, str):
        bad = change
    else:
        bad = {k: v for k, v in {**GOOD[kind], **change}.items() if v is not None}
    path = _write(tmp_path, kind, [GOOD[kind] | {"id": "first"}, "", bad])
    with pytest.raises(SchemaError) as info:
        schemas.read_all(path, rule_ids=RULE_IDS)
    err = info.value
    assert (err.path, err.line, err.field) == (path, 3, field)
    assert str(err).startswith(f"{path}:3: field '{field}'")
    assert isinstance(err, ValueError)


def test_duplicate_id(tmp_path):
    path = _write(tmp_path, "dialogues", [GOOD["dialogues"], GOOD["dialogues"]])
    with pytest.raises(SchemaError, match="duplicate id 'd' \\(first on line 1\\)") as info:
        schemas.read_all(path)
    assert (info.value.line, info.value.field) == (2, "id")


def test_rule_ids_unchecked_without_rules_file(tmp_path):
    path = _write(tmp_path, "rule_ratings", [GOOD["rule_ratings"] | {"rule_id": "anything"}])
    assert schemas.read_all(path)[0].rule_id == "anything"


def test_kind_from_file_name(tmp_path):
    assert schemas.kind_of("a/preferences.test.jsonl") == "preferences"
    assert schemas.kind_of(os.path.join("x", "corpus.jsonl")) == "corpus"
    with pytest.raises(ValueError, match="cannot tell the data kind"):
        schemas.kind_of("stuff.jsonl")
