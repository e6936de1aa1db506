"""BM25 search engine: retrieval quality on the toy world, fragments, junk queries,
save/load, corpus errors, registry."""
import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from sparrow_jax.data.toyworld import ToyWorldConfig, build_world
from sparrow_jax.search import (
    BM25Engine, CorpusError, Document, SearchEngine, SearchResult, available_engines,
    format_evidence, make_engine, register_engine, write_corpus,
)
from sparrow_jax.search.fragments import best_fragment, split_sentences

LONG_TEXT = " ".join(
    [f"Sentence number {i} talks about nothing in particular at all." for i in range(20)]
    + ["The secret ingredient of the recipe is cardamom."]
    + [f"Another filler line {i} keeps the document long enough here." for i in range(20)]
)


@pytest.fixture(scope="module")
def world():
    return build_world(ToyWorldConfig(seed=3))


@pytest.fixture(scope="module")
def small_docs():
    return [
        Document("a", "Vorlen", "https://toywiki.org/Vorlen",
                 "Vorlen is a town. The symbol of Vorlen is the otter. The main export of Vorlen is salt."),
        Document("b", "Kelvar", "https://toywiki.org/Kelvar",
                 "The Kelvar is a river. The main fish in the Kelvar is the trout."),
        Document("long", "Recipes", "https://toywiki.org/Recipes", LONG_TEXT),
    ]


def test_heldout_questions_find_their_document_first(world):
    held_out = [e for e in world.entities if e.held_out]
    hits = total = 0
    for entity in held_out:
        for attribute in entity.attributes:
            results = world.engine.search(f"{entity.name} {attribute}", k=1)
            total += 1
            hits += bool(results) and results[0].doc_id == f"{entity.type}-{entity.name.lower()}"
    rate = hits / total
    print(f"\nBM25 held-out top-1 rate: {rate:.3f} ({hits}/{total})")
    assert rate >= 0.9


def test_fragment_is_about_the_budget_and_holds_the_value(world):
    budget = world.config.fragment_chars
    for entity in [e for e in world.entities if e.held_out]:
        for attribute, value in entity.attributes.items():
            fragment = world.engine.search(f"{entity.name} {attribute}")[0].fragment
            assert len(fragment) <= budget
            assert value in fragment, (entity.name, attribute, fragment)


def test_fragment_centred_on_best_passage_and_near_budget(small_docs):
    engine = BM25Engine(small_docs, fragment_chars=300)
    result = engine.search("secret ingredient recipe")[0]
    assert result.doc_id == "long"
    assert "cardamom" in result.fragment
    assert 200 <= len(result.fragment) <= 300
    # Centred: there is text on both sides of the best sentence.
    before, _, after = result.fragment.partition("The secret ingredient")
    assert before and after
    assert len(BM25Engine(small_docs, fragment_chars=500).search("cardamom")[0].fragment) > 400


def test_fragment_of_overlong_sentence_is_clipped_around_the_hit():
    text = " ".join(["word"] * 200) + " needle " + " ".join(["word"] * 200) + "."
    fragment = best_fragment(text, ["needle"], {"needle": 1.0}, budget=60)
    assert len(fragment) <= 60 and "needle" in fragment
    assert split_sentences("One. Two! Three?  Four") == ["One.", "Two!", "Three?", "Four"]


@pytest.mark.parametrize("query", ["", "   ", "\n\t", "?!?!", "zzqx qqvv", "the of and", "Ünïcödé ☃"])
def test_empty_or_junk_queries_give_no_results(small_docs, query):
    assert BM25Engine(small_docs).search(query, k=3) == []


def test_k_bounds(small_docs):
    engine = BM25Engine(small_docs)
    assert engine.search("Vorlen", k=0) == []
    assert len(engine.search("the main otter trout", k=50)) <= len(small_docs)
    results = engine.search("main trout otter", k=2)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


@settings(max_examples=40, deadline=None)
@given(query=st.text(max_size=40), k=st.integers(0, 5))
def test_any_query_is_safe(small_docs, query, k):
    results = BM25Engine(small_docs, fragment_chars=80).search(query, k=k)
    assert len(results) <= k
    assert all(isinstance(r, SearchResult) and len(r.fragment) <= 80 for r in results)


def test_save_load_round_trip(tmp_path, world):
    index_dir = tmp_path / "index"
    world.engine.save(index_dir)
    loaded = BM25Engine.load(index_dir)
    queries = [f"{e.name} {a}" for e in world.entities[:40] for a in e.attributes] + ["otter symbol", ""]
    for q in queries:
        assert loaded.search(q, k=3) == world.engine.search(q, k=3)
    assert BM25Engine.load(index_dir, fragment_chars=50).fragment_chars == 50


def test_build_from_corpus_file_and_registry(tmp_path, small_docs):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, small_docs)
    built = make_engine("bm25", corpus_path=str(corpus), index_dir=str(tmp_path / "idx"),
                        fragment_chars=120)
    assert isinstance(built, SearchEngine)
    assert os.path.exists(tmp_path / "idx" / "engine.json")
    loaded = make_engine("bm25", index_dir=str(tmp_path / "idx"))  # loads, no corpus needed
    assert loaded.search("Kelvar fish") == built.search("Kelvar fish")
    assert loaded.search("Kelvar fish")[0].doc_id == "b"
    with pytest.raises(ValueError, match="bm25"):
        make_engine("no-such-engine")
    with pytest.raises(ValueError, match="corpus_path"):
        make_engine("bm25", index_dir=str(tmp_path / "missing"))


def test_other_engines_plug_in_by_name():
    class Echo:
        def __init__(self, prefix):
            self.prefix = prefix

        def search(self, query, k=1):
            return [SearchResult("x", "Echo", "echo://", self.prefix + query, 1.0)][:k]

    register_engine("test-echo")(Echo)
    assert "test-echo" in available_engines() and "bm25" in available_engines()
    engine = make_engine("test-echo", prefix="> ")
    assert isinstance(engine, SearchEngine)
    assert engine.search("hi")[0].fragment == "> hi"


def test_format_evidence():
    text = format_evidence(SearchResult("a", "Vorlen", "https://toywiki.org/Vorlen", "The symbol is the otter.", 2.0))
    assert text.split("\n") == ["Vorlen", "Source: https://toywiki.org/Vorlen", "The symbol is the otter."]


@pytest.mark.parametrize("lines, line_no, needle", [
    (['{"id": "a", "title": "t", "url": "u", "text": "x"}', '{"id": "b", "title": "t"'], 2, "malformed JSON"),
    (['{"id": "a", "url": "u", "text": "x"}'], 1, "field 'title'"),
    (['', '{"id": "a", "title": "t", "url": "u", "text": 5}'], 2, "field 'text'"),
    (['{"id": "a", "title": "t", "url": "u", "text": "x"}'] * 2, 2, "field 'id'"),
    (['["not", "an", "object"]'], 1, "expected an object"),
])
def test_corpus_errors_name_file_line_and_field(tmp_path, lines, line_no, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as info:  # CorpusError, or the reader's SchemaError
        BM25Engine.build(path)
    message = str(info.value)
    assert f"{path}:{line_no}:" in message and needle in message


def test_empty_corpus_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(CorpusError, match="no documents"):
        BM25Engine.build(path)


def test_load_rejects_a_non_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="engine.json"):
        BM25Engine.load(tmp_path)
    (tmp_path / "engine.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        BM25Engine.load(tmp_path)
