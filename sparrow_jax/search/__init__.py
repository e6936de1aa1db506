"""Search: the `SearchEngine` protocol, evidence formatting, and the embedded BM25 engine.

    engine = make_engine("bm25", index_dir=..., corpus_path=...)
    results = engine.search("Vorlen symbol", k=1)
    turn_text = format_evidence(results[0])
"""
from sparrow_jax.search.base import (
    SearchEngine,
    SearchResult,
    available_engines,
    format_evidence,
    make_engine,
    register_engine,
)
from sparrow_jax.search.bm25 import BM25Engine
from sparrow_jax.search.corpus import CorpusError, Document, load_corpus, tokenize, write_corpus

__all__ = [
    "BM25Engine", "CorpusError", "Document", "SearchEngine", "SearchResult", "available_engines",
    "format_evidence", "load_corpus", "make_engine", "register_engine", "tokenize", "write_corpus",
]
