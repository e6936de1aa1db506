"""Converters from HH-RLHF, PKU-SafeRLHF and question lists, on the hand-written fixtures."""
import json
import os

import pytest

from data_helpers import FIXTURES
from sparrow_jax.data import converters, schemas
from sparrow_jax.dialogue.rules import load_rules
from sparrow_jax.dialogue.turns import Role, Turn

RULE_IDS = {rule.id for rule in load_rules()}


def test_hh(tmp_path):
    prefs, dialogues = tmp_path / "preferences.train.jsonl", tmp_path / "dialogues.train.jsonl"
    result = converters.convert("hh", os.path.join(FIXTURES, "hh.jsonl"), prefs, dialogues_out=dialogues)
    assert result["skipped"] == {"identical transcripts": 1,
                                 "transcripts differ before the final assistant turn": 1}
    records = schemas.read_all(prefs)
    assert [r.id for r in records] == ["hh-1", "hh-2", "hh-6"]
    first, second, third = records
    assert first.context == (Turn(Role.USER, "What is the capital of France?"),)
    assert first.candidates == ((Turn(Role.AGENT, "The capital of France is Paris."),),
                                (Turn(Role.AGENT, "I think it is Lyon."),))
    assert (first.chosen, first.has_evidence) == (0, (False, False))
    assert [t.role for t in second.context] == [Role.USER, Role.AGENT, Role.USER]
    assert second.candidates[1] == (Turn(Role.AGENT, "No."),)
    assert third.context[0].text == "Line breaks\nacross lines?"
    assert third.candidates == ((Turn(Role.AGENT, "They are kept:\nline one\nline two"),),
                                (Turn(Role.AGENT, ""),))
    sft = schemas.read_all(dialogues)
    assert [d.id for d in sft] == ["hh-1", "hh-2", "hh-6"]
    assert sft[1].turns == second.context + second.candidates[0]


def test_hh_strict_fails_on_a_skip(tmp_path):
    with pytest.raises(ValueError, match="identical transcripts"):
        converters.convert("hh", os.path.join(FIXTURES, "hh.jsonl"), tmp_path / "p.jsonl", strict=True)


def test_hh_bad_transcript_names_line_and_field(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "Robot: x"}) + "\n"
                    + json.dumps({"chosen": "\n\nHuman: a"}) + "\n")
    with pytest.raises(schemas.SchemaError) as info:
        converters.convert("hh", path, tmp_path / "p.jsonl")
    assert (info.value.line, info.value.field) == (1, "rejected")


def test_pku(tmp_path):
    prefs, ratings = tmp_path / "preferences.train.jsonl", tmp_path / "rule_ratings.train.jsonl"
    result = converters.convert("pku", os.path.join(FIXTURES, "pku.jsonl"), prefs,
                                rule_ratings_out=ratings, rule_ids=RULE_IDS)
    assert result["skipped"] == {}
    preferences = schemas.read_all(prefs)
    assert [p.chosen for p in preferences] == [0, 1, 0]
    assert preferences[2].extra == {"safer": 1}
    assert preferences[0].context == (Turn(Role.USER, "How can I get back at my neighbour?"),)
    rated = schemas.read_all(ratings, rule_ids=RULE_IDS)
    assert len(rated) == 3 * 2 * len(converters.PKU_RATED_RULES)
    broken = {(r.id.split("-r")[0], r.dialogue[-1].text[:12], r.rule_id) for r in rated if r.broken}
    assert broken == {
        ("pku-1", "Call them an", "no_insults"),
        ("pku-2", "Yes, everyon", "no_stereotypes"), ("pku-2", "Yes, everyon", "no_identity_attacks"),
        ("pku-3", "Use a tensio", "general_harm"),  # unsafe, no category flagged
    }


def test_pku_table_covers_19_categories_with_known_rules():
    assert len(converters.PKU_HARM_TO_RULES) == 19
    assert set(converters.PKU_RATED_RULES) <= RULE_IDS


def test_pku_unknown_category_is_an_error(tmp_path):
    row = json.loads(open(os.path.join(FIXTURES, "pku.jsonl")).readline())
    row["response_1_harm_category"] = {"Rudeness": True}
    path = tmp_path / "pku.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(schemas.SchemaError, match="unknown harm category 'Rudeness'") as info:
        converters.convert("pku", path, tmp_path / "p.jsonl", rule_ratings_out=tmp_path / "r.jsonl")
    assert info.value.field == "response_1_harm_category"


def test_questions(tmp_path):
    out = tmp_path / "prompts.train.jsonl"
    converters.convert("questions", os.path.join(FIXTURES, "questions.txt"), out)
    prompts = schemas.read_all(out)
    assert [(p.id, p.source, p.context[0].text) for p in prompts] == [
        ("eli5-1", "eli5", "Why is the sky blue?"),
        ("eli5-2", "eli5", "How do airplanes stay in the air?"),
        ("eli5-4", "eli5", "Why do cats purr?")]
