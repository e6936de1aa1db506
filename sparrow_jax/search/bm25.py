"""The embedded default search engine: BM25 (via bm25s) over a JSONL corpus.

An index directory holds the bm25s index (built from our own deterministic vocabulary,
so the saved bytes depend only on the corpus), `docs.jsonl` (the documents, needed to cut
fragments) and `engine.json` (settings and document frequencies for fragment scoring).
"""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from sparrow_jax.search.base import SearchResult, register_engine
from sparrow_jax.search.corpus import Document, load_corpus, tokenize, write_corpus
from sparrow_jax.search.fragments import best_fragment


def _bm25s():
    # Imported on first use: bm25s imports jax when it is installed and runs a computation,
    # which would start the XLA backend before `jax.distributed.initialize` in a pod run.
    import bm25s
    return bm25s

DOCS_FILE = "docs.jsonl"
META_FILE = "engine.json"
FORMAT_VERSION = 1


class BM25Engine:
    """BM25 retrieval with evidence fragments of about `fragment_chars` characters."""

    def __init__(
        self,
        docs: Sequence[Document],
        fragment_chars: int = 500,
        k1: float = 1.5,
        b: float = 0.75,
        index_dir: str | None = None,
        _retriever=None,
    ):
        if not docs:
            raise ValueError("BM25Engine needs at least one document")
        if fragment_chars <= 0:
            raise ValueError(f"fragment_chars must be positive, got {fragment_chars}")
        self.docs = list(docs)
        self.fragment_chars = fragment_chars
        self.k1, self.b = k1, b
        self.index_dir = index_dir
        doc_tokens = [tokenize(f"{d.title} {d.text}") for d in self.docs]
        self.doc_freq = _doc_frequencies(doc_tokens)
        n = len(self.docs)
        self._idf = {t: math.log(1.0 + n / df) for t, df in self.doc_freq.items()}
        if _retriever is None:
            vocab = {t: i for i, t in enumerate(sorted(self.doc_freq))}
            _retriever = _bm25s().BM25(k1=k1, b=b)
            _retriever.index(
                ([[vocab[t] for t in toks] for toks in doc_tokens], vocab),
                create_empty_token=False,
                show_progress=False,
            )
        self._retriever = _retriever

    @classmethod
    def build(
        cls, corpus_path: str | os.PathLike, index_dir: str | os.PathLike | None = None,
        fragment_chars: int = 500, k1: float = 1.5, b: float = 0.75,
    ) -> "BM25Engine":
        """Index a JSONL corpus (`{"id","title","url","text"}`); saved to `index_dir` if given."""
        engine = cls(load_corpus(corpus_path), fragment_chars=fragment_chars, k1=k1, b=b)
        if index_dir is not None:
            engine.save(index_dir)
        return engine

    def save(self, index_dir: str | os.PathLike | None = None) -> str:
        index_dir = index_dir if index_dir is not None else self.index_dir
        if index_dir is None:
            raise ValueError("save() needs an index_dir")
        index_dir = os.fspath(index_dir)
        os.makedirs(index_dir, exist_ok=True)
        self._retriever.save(index_dir, show_progress=False)
        write_corpus(os.path.join(index_dir, DOCS_FILE), self.docs)
        meta = {"format_version": FORMAT_VERSION, "fragment_chars": self.fragment_chars,
                "k1": self.k1, "b": self.b, "num_docs": len(self.docs)}
        with open(os.path.join(index_dir, META_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
        self.index_dir = index_dir
        return index_dir

    @classmethod
    def load(cls, index_dir: str | os.PathLike, fragment_chars: int | None = None) -> "BM25Engine":
        """Reload a saved index; `fragment_chars` overrides the saved budget."""
        index_dir = os.fspath(index_dir)
        meta_path = os.path.join(index_dir, META_FILE)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{index_dir} is not a BM25Engine index (no {META_FILE})")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: unsupported format_version {meta.get('format_version')}")
        docs = load_corpus(os.path.join(index_dir, DOCS_FILE))
        retriever = _bm25s().BM25.load(index_dir, show_progress=False)
        if retriever.scores["num_docs"] != len(docs):
            raise ValueError(f"{index_dir}: index has {retriever.scores['num_docs']} docs, "
                             f"{DOCS_FILE} has {len(docs)}")
        return cls(docs, fragment_chars=fragment_chars or meta["fragment_chars"],
                   k1=meta["k1"], b=meta["b"], index_dir=index_dir, _retriever=retriever)

    def search(self, query: str, k: int = 1) -> list[SearchResult]:
        """The k best documents for `query`, best first; [] if no query word is in the corpus."""
        if k <= 0:
            return []
        query_tokens = [t for t in tokenize(query) if t in self.doc_freq]
        if not query_tokens:
            return []
        scores = self._retriever.get_scores(query_tokens)
        order = np.argsort(-scores, kind="stable")[:k]
        results = []
        for i in order:
            if scores[i] <= 0.0:
                break
            doc = self.docs[int(i)]
            fragment = best_fragment(doc.text, query_tokens, self._idf, self.fragment_chars)
            results.append(SearchResult(doc.id, doc.title, doc.url, fragment, float(scores[i])))
        return results


def _doc_frequencies(doc_tokens: Sequence[Sequence[str]]) -> dict[str, int]:
    df: dict[str, int] = {}
    for toks in doc_tokens:
        for t in set(toks):
            df[t] = df.get(t, 0) + 1
    return df


@register_engine("bm25")
def make_bm25_engine(
    index_dir: str | None = None, corpus_path: str | None = None, fragment_chars: int | None = None,
    **kwargs,
) -> BM25Engine:
    """Load `index_dir` if it holds an index, else build from `corpus_path` (saving to index_dir)."""
    if index_dir is not None and os.path.exists(os.path.join(index_dir, META_FILE)):
        return BM25Engine.load(index_dir, fragment_chars=fragment_chars)
    if corpus_path is None:
        raise ValueError("the bm25 engine needs an existing index_dir or a corpus_path")
    return BM25Engine.build(corpus_path, index_dir, fragment_chars=fragment_chars or 500, **kwargs)
