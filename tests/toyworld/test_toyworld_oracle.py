"""The oracle against the generator's own hidden labels; flaw rate; fact checks."""
import dataclasses
import json
import math

import pytest

from sparrow_jax.data.toyworld import CHECKABLE_RULES, Oracle, ToyWorldConfig, UncheckableRule, build_world
from sparrow_jax.data.toyworld.dialogues import generate_dialogues, probe_fill
from sparrow_jax.data.toyworld.oracle import is_repetitive
from sparrow_jax.data.toyworld.templates import PROBES, RUDE_ANSWER_PREFIX
from sparrow_jax.dialogue.rules import load_rules
from sparrow_jax.dialogue.turns import Role, dialogue

CONFIG = ToyWorldConfig(seed=1, n_entities=60, n_heldout=15, n_dialogues=2000)


@pytest.fixture(scope="module")
def world():
    return build_world(CONFIG)


@pytest.fixture(scope="module")
def oracle(world):
    return world.oracle()


@pytest.fixture(scope="module")
def samples(world):
    return {split: generate_dialogues(world.split_world(split, "dialogues"), 1500)
            for split in ("train", "test")}


def test_checkable_rules_are_sparrow_rule_ids():
    ids = {rule.id for rule in load_rules()}
    assert set(CHECKABLE_RULES) <= ids and len(CHECKABLE_RULES) == 8


def test_every_probe_template_is_judged_as_labelled(world, oracle):
    sw = world.split_world("train", "templates")
    for probe in PROBES:
        for _ in range(4):
            fill = probe_fill(sw)
            for user in probe.users:
                for good in probe.good:
                    turns = dialogue([(Role.USER, user.format(**fill)), (Role.AGENT, good.format(**fill))])
                    assert oracle.violated_rules(turns) == [], (probe.rule_id, good)
                for bad in probe.bad:
                    turns = dialogue([(Role.USER, user.format(**fill)), (Role.AGENT, bad.format(**fill))])
                    assert oracle.violates(probe.rule_id, turns), (probe.rule_id, bad)


def test_generated_dialogues_match_their_hidden_labels(samples, oracle):
    for split, items in samples.items():
        kinds = {s.kind for s in items}
        assert kinds == {"factual", "chitchat", "probe"}
        for s in items:
            turns = s.judged_turns
            assert turns[-1].role == Role.AGENT
            if s.kind == "probe":
                assert oracle.violates(s.rule_id, turns) == s.flawed
            elif s.kind == "factual":
                assert oracle.searched(turns) == (not s.flawed)
                assert oracle.correct(turns, s.entity, s.attribute) == (not s.flawed)
                assert oracle.supported_and_correct(turns, s.entity, s.attribute) == (not s.flawed)
            if s.kind != "probe" or not s.flawed:
                assert not oracle.violated_rules(turns), turns
            if len(s.turns) > len(turns):  # a closing exchange follows; it never breaks a rule
                assert not oracle.violated_rules(s.turns)


@pytest.mark.parametrize("flaw_rate", [0.0, 0.35, 1.0])
def test_flaw_rate_is_respected(flaw_rate):
    world = build_world(dataclasses.replace(CONFIG, flaw_rate=flaw_rate))
    items = [s for s in generate_dialogues(world.split_world("train", "dialogues"), 1500)
             if s.kind != "chitchat"]
    share = sum(s.flawed for s in items) / len(items)
    tolerance = 4 * math.sqrt(flaw_rate * (1 - flaw_rate) / len(items)) + 1e-9
    print(f"\nflaw_rate {flaw_rate}: measured {share:.3f} over {len(items)}")
    assert abs(share - flaw_rate) <= tolerance


def test_fact_checks(world, oracle):
    entity = next(e for e in world.entities if e.type == "town")
    value = entity.attributes["symbol"]
    other = next(v for v in ("otter", "fox") if v != value)
    ask = (Role.USER, f"What is the symbol of {entity.name}?")
    say = lambda v: (Role.AGENT, f"The symbol of {entity.name} is the {v}.")
    evidence = (Role.SEARCH_RESULT, f"{entity.name}\nSource: x\nThe symbol of {entity.name} is the {value}.")
    no_search = dialogue([ask, say(value)])
    assert oracle.correct(no_search, entity.name, "symbol")
    assert not oracle.supported_and_correct(no_search, entity.name, "symbol")
    assert not oracle.searched(no_search)
    searched = dialogue([ask, (Role.SEARCH_QUERY, f"{entity.name} symbol"), evidence, say(value)])
    assert oracle.searched(searched) and oracle.supported_and_correct(searched, entity.name, "symbol")
    wrong = dialogue([ask, (Role.SEARCH_QUERY, "q"), evidence, say(other)])
    assert not oracle.correct(wrong, entity.name, "symbol")
    hedged = dialogue([ask, (Role.AGENT, f"It is the {value} or the {other}.")])
    assert not oracle.correct(hedged, entity.name, "symbol")
    assert not oracle.correct(dialogue([ask]), entity.name, "symbol")
    # Evidence about another entity does not support the answer.
    stranger = dialogue([ask, (Role.SEARCH_RESULT, f"Elsewhere\nThe symbol is the {value}."), say(value)])
    assert not oracle.supported_and_correct(stranger, entity.name, "symbol")
    # Search for an earlier question does not count as searching for the latest one.
    assert not oracle.searched(searched + dialogue([ask]))
    rude = dialogue([ask, (Role.AGENT, RUDE_ANSWER_PREFIX + f"The symbol of {entity.name} is the {value}.")])
    assert oracle.quality(rude, entity.name, "symbol") == 0
    assert oracle.quality(searched, entity.name, "symbol") == 3
    assert oracle.quality(no_search, entity.name, "symbol") == 2
    assert oracle.quality(wrong, entity.name, "symbol") == 1


def test_uncheckable_rules_raise_and_silence_is_compliant(oracle):
    with pytest.raises(UncheckableRule, match="no_legal_advice"):
        oracle.violates("no_legal_advice", dialogue([(Role.AGENT, "hi")]))
    assert not oracle.violates("no_insults", dialogue([(Role.USER, "You are stupid.")]))
    assert "no_insults" in Oracle.checkable_rules


def test_repetition_check():
    assert is_repetitive("otter otter otter otter")
    assert is_repetitive("go on and go on and go on and go on and")
    assert is_repetitive("I like it very much. I like it very much.")
    assert not is_repetitive("The symbol of Vorlen is the otter. The main export of Vorlen is salt.")


def test_oracle_round_trips_through_world_json(tmp_path, world):
    from sparrow_jax.data.toyworld.writer import world_json

    (tmp_path / "world.json").write_text(json.dumps(world_json(world)))
    loaded = Oracle.load(tmp_path)
    entity = world.entities[0]
    for attribute, value in entity.attributes.items():
        assert loaded.value(entity.name, attribute) == value
    with pytest.raises(KeyError, match="Nobody"):
        loaded.value("Nobody", "symbol")
