"""Evidence fragments: the part of a document, about `budget` characters long, that best
matches a query.

The document is split into sentences; each is scored by the summed weights (idf) of the
distinct query tokens it contains; the best sentence is then grown by whole neighbouring
sentences, keeping it roughly centred, until the next one would exceed the budget.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from sparrow_jax.search.corpus import tokenize

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def score_sentences(
    sentences: Sequence[str], query_tokens: Sequence[str], weights: Mapping[str, float]
) -> list[float]:
    query = set(query_tokens)
    return [
        sum(weights.get(t, 0.0) for t in query.intersection(tokenize(s))) for s in sentences
    ]


def _clip_to_budget(sentence: str, query_tokens: Sequence[str], budget: int) -> str:
    """A sentence longer than the budget: a word-aligned window around its first query hit."""
    lowered = sentence.lower()
    hits = [lowered.find(t) for t in query_tokens if lowered.find(t) >= 0]
    centre = min(hits) if hits else 0
    start = max(0, min(centre - budget // 2, len(sentence) - budget))
    end = start + budget
    if start > 0:
        space = sentence.find(" ", start)
        start = space + 1 if 0 <= space < end else start
    if end < len(sentence):
        space = sentence.rfind(" ", start, end + 1)
        end = space if space > start else end
    return sentence[start:end].strip()


def best_fragment(
    text: str, query_tokens: Sequence[str], weights: Mapping[str, float], budget: int
) -> str:
    """The fragment of `text` (at most `budget` characters) centred on the best sentence."""
    if budget <= 0:
        raise ValueError(f"fragment budget must be positive, got {budget}")
    sentences = split_sentences(text)
    if not sentences:
        return ""
    scores = score_sentences(sentences, query_tokens, weights)
    best = max(range(len(sentences)), key=lambda i: (scores[i], -i))
    if len(sentences[best]) > budget:
        return _clip_to_budget(sentences[best], query_tokens, budget)
    lo, hi = best, best
    length = len(sentences[best])
    before = after = 0  # characters added on each side, to keep the best sentence centred
    while True:
        options = []
        if lo > 0 and length + 1 + len(sentences[lo - 1]) <= budget:
            options.append((before, 0))
        if hi < len(sentences) - 1 and length + 1 + len(sentences[hi + 1]) <= budget:
            options.append((after, 1))
        if not options:
            break
        _, side = min(options)
        if side == 0:
            lo -= 1
            before += len(sentences[lo]) + 1
            length += len(sentences[lo]) + 1
        else:
            hi += 1
            after += len(sentences[hi]) + 1
            length += len(sentences[hi]) + 1
    return " ".join(sentences[lo : hi + 1])
