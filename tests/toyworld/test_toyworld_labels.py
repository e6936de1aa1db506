"""Preference comparisons have a unique best candidate; held-out labels are the oracle's truth."""
import json

import pytest

from sparrow_jax.data.toyworld import Oracle, ToyWorldConfig, generate
from sparrow_jax.dialogue.turns import Role, Turn


def _turns(objs):
    return [Turn(Role(o["role"]), o["text"]) for o in objs]


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("labels")
    generate(out, ToyWorldConfig(n_entities=30, n_heldout=9, n_dialogues=50, n_preferences=400,
                                 n_rule_ratings=400, n_prompts=20, rater_noise=0.2))
    return out, Oracle.load(out)


def _qualities(oracle, record):
    context = _turns(record["context"])
    fact = oracle.fact_asked(context[-1].text)
    entity, attribute = fact if fact else (None, None)
    return [oracle.quality(context + _turns(c), entity, attribute) for c in record["candidates"]]


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_comparison_has_a_unique_best(world, split):
    out, oracle = world
    for record in _read(out / f"preferences.{split}.jsonl"):
        scores = _qualities(oracle, record)
        assert scores.count(max(scores)) == 1, (record["id"], scores)


def test_test_split_labels_are_clean_and_train_labels_noisy(world):
    out, oracle = world
    def agreement(split):
        records = _read(out / f"preferences.{split}.jsonl")
        hits = [max(range(len(s := _qualities(oracle, r))), key=s.__getitem__) == r["chosen"]
                for r in records]
        return sum(hits) / len(hits)
    assert agreement("test") == 1.0
    assert 0.7 < agreement("train") < 0.9  # rater_noise=0.2 flips about a fifth

    for rating in _read(out / "rule_ratings.test.jsonl"):
        assert rating["broken"] == oracle.violates(rating["rule_id"], _turns(rating["dialogue"]))
