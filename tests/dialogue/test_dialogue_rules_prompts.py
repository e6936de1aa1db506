"""Rules and prompts as packaged data."""
import json

import pytest

from sparrow_jax.dialogue.prompts import load_prompt, prompt_names
from sparrow_jax.dialogue.render import parse, render, truncate_left
from sparrow_jax.dialogue.rules import RULE_CATEGORIES, Rule, get_rule, load_rules
from sparrow_jax.dialogue.turns import Role, Turn

RULE_IDS = [
    "no_stereotypes", "no_microaggressions", "no_threats", "no_sexual_aggression", "no_identity_attacks",
    "no_insults", "no_hate_or_harassment", "no_body", "no_relationships", "no_opinions_or_emotions",
    "not_human", "be_plausible", "no_assumptions_about_user", "no_real_world_actions", "no_medical_advice",
    "no_legal_advice", "no_financial_advice", "no_conspiracy_theories", "general_harm", "make_sense",
    "stay_on_topic", "address_the_query", "no_repetition",
]
GOOD = {"id": "a", "name": "A", "text": "Do not a.", "category": "harm"}


def test_packaged_rules_load_in_order():
    rules = load_rules()
    assert [rule.id for rule in rules] == RULE_IDS
    for rule in rules:
        assert rule.category in RULE_CATEGORIES
        assert rule.text.startswith(("Do not", "Only")) and rule.text.endswith(".")


def _write(tmp_path, lines):
    path = tmp_path / "rules.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "field .<json>.: malformed JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "text"} | {"id": "b"}), "missing field 'text'"),
    (json.dumps(GOOD | {"id": "b", "name": ""}), "field 'name'"),
    (json.dumps(GOOD | {"id": "b", "category": "misc"}), "field 'category'"),
    (json.dumps(GOOD | {"id": "b", "extra": 1}), "unknown field 'extra'"),
    (json.dumps(GOOD), "field 'id': duplicate id 'a' \\(first on line 1\\)"),
])
def test_malformed_rules_name_file_line_and_field(tmp_path, bad_line, message):
    path = _write(tmp_path, [json.dumps(GOOD), "", bad_line])
    with pytest.raises(ValueError, match=f"rules.jsonl:3: {message}"):
        load_rules(path)


def test_get_rule():
    rules = load_rules()
    assert get_rule(rules, "no_insults") == Rule("no_insults", *[getattr(rules[5], f)
                                                                 for f in ("name", "text", "category")])
    with pytest.raises(KeyError, match="unknown rule id 'no_insult'.*did you mean 'no_insults'"):
        get_rule(rules, "no_insult")


def test_prompts_load_and_render(tokenizer):
    assert {"dpc", "short"} <= set(prompt_names())
    prompt = load_prompt("dpc")
    assert prompt[0].role == Role.USER and "Sparrow" in prompt[0].text
    roles = {turn.role for turn in prompt}
    assert roles == set(Role)  # shows a search and plain answers
    rendered = render(prompt, tokenizer, open_role=Role.AGENT)
    assert parse(rendered.token_ids, tokenizer, allow_open=True)[:-1] == prompt
    rendered = render(prompt + (Turn(Role.AGENT, "ok"),), tokenizer, loss_from_turn=len(prompt))
    start, end = rendered.turn_spans[-1]
    assert rendered.loss_mask.sum() == end - start  # the prompt's own agent turns get no loss
    short = render(load_prompt("short"), tokenizer)
    assert not truncate_left(short, 128)[1]  # fits a tiny context even with this toy tokenizer


def test_prompt_from_path_and_errors(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"preamble": "", "turns": [{"role": "agent", "text": "hi"}]}))
    assert load_prompt(path) == (Turn(Role.AGENT, "hi"),)  # empty preamble: no leading turn
    path.write_text(json.dumps({"turns": [{"role": "robot", "text": "hi"}]}))
    with pytest.raises(ValueError, match="mine.json: malformed prompt"):
        load_prompt(path)
    with pytest.raises(ValueError, match="unknown prompt 'nope'.*dpc"):
        load_prompt("nope")
