"""The toy world's files: schemas, held-out isolation, determinism, sizes and timing."""
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import pytest

from sparrow_jax.data.toyworld import CHECKABLE_RULES, Oracle, ToyWorldConfig, generate
from sparrow_jax.data.toyworld.templates import ENTITY_TYPES, TYPES_BY_NAME
from sparrow_jax.dialogue.turns import Role, Turn
from sparrow_jax.search import BM25Engine

SMALL = dict(n_entities=30, n_heldout=9, n_distractors=5, n_dialogues=200, n_preferences=80,
             n_rule_ratings=80, n_prompts=60)
AGENT_ADDS = ([Role.AGENT], [Role.SEARCH_QUERY, Role.SEARCH_RESULT, Role.AGENT])


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    start = time.perf_counter()
    paths = generate(out, ToyWorldConfig())
    seconds = time.perf_counter() - start
    print(f"\ntoy world generate (default sizes): {seconds:.2f} s")
    assert seconds < 30
    return paths


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def check_turns(obj):
    assert isinstance(obj, list) and obj
    turns = [Turn.from_json(t) for t in obj]
    assert all(set(t) == {"role", "text"} and isinstance(t["text"], str) and t["text"] for t in obj)
    return turns


def check_record(kind, rec, split, world):
    assert rec["id"].startswith(split)
    if kind == "dialogues":
        assert set(rec) == {"id", "turns"}
        check_turns(rec["turns"])
    elif kind == "preferences":
        assert set(rec) == {"id", "context", "candidates", "chosen", "has_evidence", "supported", "plausible"}
        assert check_turns(rec["context"])[-1].role == Role.USER
        k = world["config"]["k_candidates"]
        assert len(rec["candidates"]) == len(rec["has_evidence"]) == len(rec["supported"]) == k
        assert len(rec["plausible"]) == k and 0 <= rec["chosen"] < k
        for cand, ev, sup in zip(rec["candidates"], rec["has_evidence"], rec["supported"]):
            roles = [t.role for t in check_turns(cand)]
            assert roles in AGENT_ADDS and ev == (len(roles) == 3)
            assert (sup is None) if not ev else isinstance(sup, bool)
        assert all(isinstance(p, bool) for p in rec["plausible"])
    elif kind == "rule_ratings":
        assert set(rec) == {"id", "dialogue", "rule_id", "broken"}
        check_turns(rec["dialogue"])
        assert rec["rule_id"] in CHECKABLE_RULES and isinstance(rec["broken"], bool)
    elif kind == "prompts":
        assert rec["source"] in ("eli5", "human", "red_team")
        assert [t.role for t in check_turns(rec["context"])][-1] == Role.USER
        extra = {"eli5": {"entity", "attribute"}, "human": set(), "red_team": {"rule_id"}}[rec["source"]]
        assert set(rec) == {"id", "source", "context"} | extra
        if rec["source"] == "red_team":
            assert rec["rule_id"] in CHECKABLE_RULES


def test_every_line_matches_the_schema(default_world):
    world = json.load(open(default_world["world"]))
    for kind in ("dialogues", "preferences", "rule_ratings", "prompts"):
        for split in ("train", "test"):
            records = read_jsonl(default_world[f"{kind}.{split}"])
            assert records
            assert len({r["id"] for r in records}) == len(records)
            for rec in records:
                check_record(kind, rec, split, world)
    for doc in read_jsonl(default_world["corpus"]):
        assert set(doc) == {"id", "title", "url", "text"} and all(isinstance(v, str) for v in doc.values())


def test_sizes_follow_the_config(default_world):
    cfg = ToyWorldConfig()
    assert len(read_jsonl(default_world["dialogues.train"])) == cfg.n_dialogues
    assert len(read_jsonl(default_world["preferences.test"])) == cfg.n_test(cfg.n_preferences)
    assert len(read_jsonl(default_world["corpus"])) == cfg.n_entities + cfg.n_unfamiliar + cfg.n_distractors


def test_heldout_entities_only_in_corpus_and_test_files(default_world):
    world = json.load(open(default_world["world"]))
    held_out = set(world["heldout"])
    assert len(held_out) == ToyWorldConfig().n_heldout
    word = re.compile(r"[A-Za-z]+")

    def names_in(path):
        with open(path, encoding="utf-8") as f:
            return set(word.findall(f.read()))

    for key in ("dialogues.train", "preferences.train", "rule_ratings.train", "prompts.train", "lm"):
        leaked = held_out & names_in(default_world[key])
        assert not leaked, (key, sorted(leaked)[:5])
    assert held_out <= names_in(default_world["corpus"])
    test_names = names_in(default_world["dialogues.test"]) | names_in(default_world["prompts.test"])
    assert held_out & test_names
    for split, expect_held_out in (("train", False), ("test", True)):
        for rec in read_jsonl(default_world[f"prompts.{split}"]):
            if rec["source"] == "eli5":
                assert (rec["entity"] in held_out) == expect_held_out


def test_search_index_and_oracle_agree_with_the_corpus(default_world):
    engine = BM25Engine.load(default_world["search_index"])
    oracle = Oracle.load(os.path.dirname(default_world["world"]))
    for rec in read_jsonl(default_world["prompts.test"]):
        if rec["source"] == "eli5":
            value = oracle.value(rec["entity"], rec["attribute"])
            result = engine.search(f"{rec['entity']} {rec['attribute']}")[0]
            assert result.title == rec["entity"] and value in result.fragment


def test_rule_ratings_are_roughly_balanced_and_cover_the_rules(default_world):
    records = read_jsonl(default_world["rule_ratings.train"])
    share = sum(r["broken"] for r in records) / len(records)
    print(f"\nrule ratings broken share: {share:.2f}")
    assert 0.3 <= share <= 0.6
    assert {r["rule_id"] for r in records} == set(CHECKABLE_RULES)


def test_preferences_mostly_choose_the_oracle_best(default_world):
    oracle = Oracle.load(os.path.dirname(default_world["world"]))
    records = read_jsonl(default_world["preferences.train"])
    agree = 0
    for rec in records:
        context = [Turn.from_json(t) for t in rec["context"]]
        fact = oracle.fact_asked(context[-1].text) or (None, None)
        quality = [oracle.quality(context + [Turn.from_json(t) for t in c], *fact)
                   for c in rec["candidates"]]
        agree += quality[rec["chosen"]] == max(quality)
        assert sum(rec["has_evidence"]) in (0, len(rec["candidates"]) // 2)
    rate = agree / len(records)
    noise = ToyWorldConfig().rater_noise
    print(f"\npreferences choosing the oracle best: {rate:.3f}")
    assert 1 - 2 * noise <= rate <= 1 - noise / 2


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    def digest(out):
        h = {}
        for root, _, files in os.walk(out):
            for name in files:
                path = os.path.join(root, name)
                h[os.path.relpath(path, out)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
        return h

    a = digest(os.path.dirname(generate(tmp_path / "a", ToyWorldConfig(seed=5, **SMALL))["world"]))
    b = digest(os.path.dirname(generate(tmp_path / "b", ToyWorldConfig(seed=5, **SMALL))["world"]))
    c = digest(os.path.dirname(generate(tmp_path / "c", ToyWorldConfig(seed=6, **SMALL))["world"]))
    assert a == b
    # Another process with another hash seed writes the same bytes (no set-order leaks).
    code = (f"from sparrow_jax.data.toyworld import generate, ToyWorldConfig; "
            f"generate({str(tmp_path / 'd')!r}, ToyWorldConfig(seed=5, **{SMALL!r}))")
    env = dict(os.environ, PYTHONHASHSEED="12345", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert digest(tmp_path / "d") == a
    assert any(a[k] != c[k] for k in a if k != "search_index/params.index.json")


def test_the_answer_can_copy_the_value_from_the_evidence(default_world):
    """What lets the tiny trunk learn to answer from a search result: the evidence is the one
    sentence stating the fact, and the reply says the value after the same word as that
    sentence, a word said once in it."""
    for etype in ENTITY_TYPES:
        for spec in etype.attributes:
            doc_words = spec.doc.split("{v}")[0].split()
            answer_words = spec.answer.split("{v}")[0].split()
            assert answer_words[-1] == doc_words[-1], (etype.name, spec.name)
            assert doc_words.count(doc_words[-1]) == 1, (etype.name, spec.name)
    engine = BM25Engine.load(default_world["search_index"])
    oracle = Oracle.load(os.path.dirname(default_world["world"]))
    asked = [r for r in read_jsonl(default_world["prompts.test"]) if r["source"] == "eli5"]
    assert asked
    just_the_fact = 0
    for rec in asked:
        entity = oracle.entities[rec["entity"]]
        spec = TYPES_BY_NAME[entity.type].attribute(rec["attribute"])
        fact = spec.doc.format(e=entity.name, v=entity.attributes[spec.name])
        fragment = engine.search(f"{rec['entity']} {rec['attribute']}")[0].fragment
        assert fact in fragment
        just_the_fact += fragment == fact  # else two short sentences fitted the budget
    assert just_the_fact >= 0.9 * len(asked)


def test_lm_text_has_docs_and_transcripts(default_world):
    text = open(default_world["lm"], encoding="utf-8").read()
    assert "User: " in text and "Sparrow: " in text and "Search Query: " in text
    assert "Search Result: " in text and "Source: https://toywiki.org/" in text


def test_config_validation():
    with pytest.raises(ValueError, match="k_candidates"):
        ToyWorldConfig(k_candidates=3)
    with pytest.raises(ValueError, match="flaw_rate"):
        ToyWorldConfig(flaw_rate=1.5)
    with pytest.raises(ValueError, match="n_heldout"):
        ToyWorldConfig(n_entities=10, n_heldout=10)
