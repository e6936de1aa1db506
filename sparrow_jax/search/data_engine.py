"""The search engine of a data dir, without ever writing into the data dir.

    engine = data_dir_engine(data_dir, cache_dir=os.path.join(workdir, "search_index"))

A built data dir is read-only to the stages: `sparrow data toyworld` saves the index in
DATA/search_index/ when it builds the dir; a dir that has only DATA/corpus.jsonl gets
its index built here and saved to `cache_dir` (the run's workdir), and read back from
there next time. Without `cache_dir` the index is built in memory.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from sparrow_jax.search.base import make_engine

INDEX_DIR = "search_index"
CORPUS_FILE = "corpus.jsonl"
_META_FILE = "engine.json"  # what marks a saved index (bm25.META_FILE)


class NoSearch:
    """The engine of a data dir without a corpus: search is off, every query finds nothing."""

    disabled = True

    def search(self, query: str, k: int = 1) -> list:
        return []


def _has_index(path: str | None) -> bool:
    return bool(path) and os.path.exists(os.path.join(path, _META_FILE))


def data_dir_engine(data_dir: str, cache_dir: str | None = None, name: str = "bm25"):
    """DATA/search_index if built, else `cache_dir` if it holds an index, else an index of
    DATA/corpus.jsonl (saved to `cache_dir` when given). FileNotFoundError naming both files
    when the data dir has neither."""
    built = os.path.join(data_dir, INDEX_DIR)
    if _has_index(built):
        return make_engine(name, index_dir=built)
    if _has_index(cache_dir):
        return make_engine(name, index_dir=cache_dir)
    corpus = os.path.join(data_dir, CORPUS_FILE)
    if not os.path.exists(corpus):
        raise FileNotFoundError(f"{data_dir} has no search index ({INDEX_DIR}/) and no corpus "
                                f"({CORPUS_FILE}) to build one from")
    engine = make_engine(name, corpus_path=corpus)
    if cache_dir:
        _save_atomically(engine, cache_dir)
    return engine


def _save_atomically(engine, cache_dir: str) -> None:
    """Save to a temp dir beside `cache_dir`, then rename: a reader (or another process saving
    the same index) never sees half an index; if another process got there first, keep its."""
    parent = os.path.dirname(os.path.abspath(cache_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".search_index.", dir=parent)
    try:
        engine.save(tmp)
        os.replace(tmp, cache_dir)
        engine.index_dir = cache_dir
    except OSError:
        if not _has_index(cache_dir):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
