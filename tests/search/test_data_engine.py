"""A data dir's search engine is read from it, or built from its corpus, never written into it."""
import json
import os

import pytest

from sparrow_jax.search.data_engine import data_dir_engine

DOCS = [{"id": "d1", "title": "Vorlen", "url": "https://x.org/vorlen",
         "text": "The Vorlen is a river whose symbol is the heron."},
        {"id": "d2", "title": "Guloth", "url": "https://x.org/guloth",
         "text": "Guloth sea fish are silver and live in cold water."}]


def listing(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


@pytest.fixture
def data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return str(data)


def test_a_corpus_is_indexed_into_the_cache_and_the_data_dir_is_untouched(data_dir, tmp_path):
    before = listing(data_dir)
    cache = str(tmp_path / "workdir" / "search_index")
    engine = data_dir_engine(data_dir, cache_dir=cache)
    assert engine.search("Vorlen symbol")[0].doc_id == "d1"
    assert listing(data_dir) == before
    assert engine.index_dir == cache and os.path.exists(os.path.join(cache, "engine.json"))
    again = data_dir_engine(data_dir, cache_dir=cache)  # read back from the cache
    assert again.index_dir == cache and again.search("silver fish")[0].doc_id == "d2"
    assert [p for p in os.listdir(tmp_path / "workdir") if p.startswith(".")] == []  # no temp left
    in_memory = data_dir_engine(data_dir)
    assert in_memory.index_dir is None and listing(data_dir) == before


def test_a_built_index_in_the_data_dir_is_used_as_it_is(data_dir, tmp_path):
    data_dir_engine(data_dir, cache_dir=os.path.join(data_dir, "search_index"))  # as toyworld saves it
    before = listing(data_dir)
    cache = str(tmp_path / "cache")
    engine = data_dir_engine(data_dir, cache_dir=cache)
    assert engine.index_dir == os.path.join(data_dir, "search_index") and not os.path.exists(cache)
    assert listing(data_dir) == before


def test_no_index_and_no_corpus_is_an_error_naming_both(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no search index \(search_index/\) and no corpus "
                                                 r"\(corpus.jsonl\)"):
        data_dir_engine(str(tmp_path))


def test_evaluation_without_a_corpus_turns_search_off_in_one_line(tmp_path, capsys):
    import types

    from sparrow_jax.config import default_config
    from sparrow_jax.evaluation import evaluator
    from sparrow_jax.search.data_engine import NoSearch

    engine = evaluator.load_engine(str(tmp_path))
    assert isinstance(engine, NoSearch) and engine.search("anything") == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"search disabled: {tmp_path} has no search index (search_index/) and no corpus "
                   "(corpus.jsonl) to build one from"]
    cfg = default_config()
    agent = types.SimpleNamespace(cfg=cfg, model_cfg=cfg.model, tokenizer=None, data_dir=str(tmp_path))
    assert evaluator.make_environment(agent, "free").config.evidence == "never"
    assert evaluator.make_environment(agent, "always").config.evidence == "always"  # asked for: kept
