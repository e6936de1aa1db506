"""Is an answer's claim found in the evidence it cited? A lexical check that needs no oracle.

An agent answer is *evidence-supported* when it follows a Search Result after the last User
turn, and at least `MIN_OVERLAP` of its content words (lower-cased words without stopwords,
`search.corpus.tokenize`) occur in that Search Result (title and fragment; the `Source:` line is
not evidence). An answer after a search with no content words of its own ("Yes.") is not
supported; an answer with no Search Result to cite is not checked (None).

It is the same for every judge (it reads only the dialogue), so the evaluation's
`evidence_support_rate` means the same with the oracle and with the reward models. It measures
whether the answer says what its evidence says, not whether the evidence is right.
"""
from __future__ import annotations

from typing import Sequence

from sparrow_jax.dialogue.turns import Role, Turn
from sparrow_jax.search.corpus import tokenize

MIN_OVERLAP = 0.5


def cited_evidence(dialogue: Sequence[Turn]) -> tuple[str, str] | None:
    """(the last Search Result's evidence text, the final agent answer) after the last User turn,
    or None when the agent answered without a Search Result."""
    answer = evidence = None
    for turn in reversed(dialogue):
        if turn.role == Role.USER:
            break
        if turn.role == Role.AGENT and answer is None:
            answer = turn.text
        elif turn.role == Role.SEARCH_RESULT and evidence is None and answer is not None:
            evidence = "\n".join(line for line in turn.text.splitlines()
                                 if not line.startswith("Source:"))
    return None if answer is None or evidence is None else (evidence, answer)


def overlap(answer: str, evidence: str) -> float:
    """Share of the answer's content words that occur in the evidence (0 when it has none)."""
    words = tokenize(answer)
    if not words:
        return 0.0
    found = set(tokenize(evidence))
    return sum(w in found for w in words) / len(words)


def evidence_supported(dialogue: Sequence[Turn], min_overlap: float = MIN_OVERLAP) -> bool | None:
    """True / False for an answer that cites a Search Result (see the module doc), else None."""
    cited = cited_evidence(dialogue)
    if cited is None:
        return None
    evidence, answer = cited
    return overlap(answer, evidence) >= min_overlap
