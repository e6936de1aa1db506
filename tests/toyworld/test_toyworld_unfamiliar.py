"""Unfamiliar entities (docs kept out of the LM text) and correct-but-unsupported search candidates."""
import json

import pytest

from sparrow_jax.data.toyworld import Oracle, ToyWorldConfig, generate
from sparrow_jax.dialogue.turns import Role, Turn

SMALL = dict(n_entities=30, n_heldout=9, n_unfamiliar=0, n_distractors=5, n_dialogues=200, n_preferences=200,
             n_rule_ratings=40, n_prompts=20)


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _turns(objs):
    return [Turn(Role(o["role"]), o["text"]) for o in objs]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    generate(base, ToyWorldConfig(**SMALL))
    extra = tmp_path_factory.mktemp("unfamiliar")
    generate(extra, ToyWorldConfig(**{**SMALL, "n_unfamiliar": 60}, unsupported_weight=0.5))
    return base, extra


def test_unfamiliar_docs_are_searchable_but_not_in_the_lm_text(worlds):
    base, extra = worlds
    world = json.loads((extra / "world.json").read_text())
    unfamiliar = [e for e in world["entities"] if e.get("unfamiliar")]
    assert len(unfamiliar) == 60 and not any(e["held_out"] for e in unfamiliar)
    names = {e["name"] for e in unfamiliar}
    assert len(names) == 60 and not names & {e["name"] for e in world["entities"]
                                             if not e.get("unfamiliar")}
    titles = {d["title"] for d in _read(extra / "corpus.jsonl")}
    assert names <= titles
    lm_text = (extra / "lm.txt").read_text()
    # Their documents are left out; they are only met in (a few) train dialogues.
    docs = {d["title"]: d["text"] for d in _read(extra / "corpus.jsonl")}
    assert not any(docs[n] in lm_text for n in names)
    dialogue_text = json.dumps(_read(extra / "dialogues.train.jsonl"))
    assert sum(n in dialogue_text for n in names) > 20
    assert not any(n in json.dumps(_read(extra / "preferences.test.jsonl")) for n in names)
    assert Oracle.load(extra).value(unfamiliar[0]["name"], next(iter(unfamiliar[0]["attributes"])))


def test_the_original_world_is_unchanged_by_the_additions(worlds):
    base, extra = worlds
    old = {e["name"]: e for e in json.loads((base / "world.json").read_text())["entities"]}
    new = {e["name"]: e for e in json.loads((extra / "world.json").read_text())["entities"]}
    assert all(new[name] == e for name, e in old.items())
    # Test files only ever mention held-out entities: the additions leave them byte-equal.
    for name in ("dialogues.test.jsonl", "rule_ratings.test.jsonl", "prompts.test.jsonl"):
        assert (base / name).read_bytes() == (extra / name).read_bytes()


def test_unsupported_candidates_are_correct_but_rank_below_the_right_search(worlds):
    _, extra = worlds
    oracle = Oracle.load(extra)
    seen = 0
    for split in ("train", "test"):
        for record in _read(extra / f"preferences.{split}.jsonl"):
            context = _turns(record["context"])
            fact = oracle.fact_asked(context[-1].text)
            if not fact:
                continue
            for cand, sup in zip(record["candidates"], record["supported"]):
                turns = context + _turns(cand)
                if len(cand) == 3 and oracle.correct(turns, *fact) and not sup:
                    seen += 1
                    assert oracle.quality(turns, *fact) == 2
                    assert fact[0] not in cand[0]["text"]  # searched another entity
            scores = [oracle.quality(context + _turns(c), *fact) for c in record["candidates"]]
            assert scores.count(max(scores)) == 1 and max(scores) == 3
    assert seen > 20


def test_flawed_search_weights_are_validated():
    with pytest.raises(ValueError, match="flawed search weights"):
        ToyWorldConfig(misread_weight=0, wrong_entity_weight=0)
    with pytest.raises(ValueError, match="n_unfamiliar"):
        ToyWorldConfig(n_unfamiliar=-1)
