"""Reranking @N on top of the RL environment's `rollout` (docs/recipe.md sections 2 and 7).

For each context, N candidate agent steps are sampled: candidates [0, N/2) with evidence mode "always"
(a Search Query, its Search Result, then the Sparrow turn) and [N/2, N) with "never" (the Sparrow turn
alone). Each candidate dialogue is scored by the preference RM (Elo) and the rule RM (P(broken) per rule)
and ranked by `sampling.rerank` (formula `sparrow` by default):

    score = sigmoid(elo - mean_elo) * (prod_i (1 - p_i)) ** (1/R),   mean_elo = mean over the N candidates

(or a fixed `mean_elo`). With `skip_malformed` (default, [ours]) a malformed candidate (empty or
over-length turn, a search with no results; the RL format penalty's cases) is never picked while a
well-formed one exists, as a deployed agent would re-sample rather than show it. The best candidate is
returned with every candidate and its scores.
RNG: the "always" half uses fold_in(rng, 0), the "never" half fold_in(rng, 1).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from sparrow_jax.dialogue.turns import Turn
from sparrow_jax.rl.rollout import Environment, Rollout, RolloutConfig, rollout
from sparrow_jax.sampling.rerank import FORMULAS, rerank


@dataclasses.dataclass(frozen=True)
class RerankConfig:
    """n: candidates per context (even, >= 2).  formula: one of `sampling.rerank.FORMULAS`.
    mean_elo: None = the mean Elo of each context's N candidates; a float = that fixed centre.
    skip_malformed: rank malformed candidates last (module docstring)."""
    n: int = 8
    formula: str = "sparrow"
    mean_elo: float | None = None
    skip_malformed: bool = True

    def __post_init__(self):
        if self.n < 2 or self.n % 2:
            raise ValueError(f"@N reranking needs an even N >= 2 (N/2 with search, N/2 without); "
                             f"got {self.n}")
        if self.formula not in FORMULAS:
            raise ValueError(f"unknown rerank formula {self.formula!r}; expected one of {FORMULAS}")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One scored candidate: its rollout, the evidence mode it was sampled with, the pref RM Elo,
    P(broken) per rule [R] (the scorer's rule order) and its log rerank score."""
    rollout: Rollout
    evidence: str
    elo: float
    p_broken_R: np.ndarray
    log_score: float


@dataclasses.dataclass(frozen=True)
class Reranked:
    """A context's N candidates and the index of the best."""
    candidates: tuple[Candidate, ...]
    best_index: int

    @property
    def best(self) -> Candidate:
        return self.candidates[self.best_index]


def rank_candidates(elo_BxN, p_broken_BxNxR, config: RerankConfig, malformed_BxN=None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(best index int32 [B], log scores float32 [B, N]) for B contexts of N scored candidates.

    The log scores are the formula's; `malformed_BxN` (bool) only changes the pick when
    `config.skip_malformed` (first on ties, as `sampling.rerank.pick_best`).
    """
    elo = np.asarray(elo_BxN, np.float32)
    mean_elo = elo.mean(axis=-1, keepdims=True) if config.mean_elo is None else config.mean_elo
    best, log_scores = rerank(elo, p_broken_BxNxR, mean_elo, config.formula)
    best, log_scores = np.asarray(best, np.int32), np.asarray(log_scores, np.float32)
    if config.skip_malformed and malformed_BxN is not None:
        malformed = np.asarray(malformed_BxN, bool)
        # Well-formed first, then the highest score, then the lowest index (a stable sort).
        best = np.asarray([np.lexsort((-row_scores, row_malformed))[0]
                           for row_scores, row_malformed in zip(log_scores, malformed)], np.int32)
    return best, log_scores


def _with_evidence(env: Environment, mode: str) -> Environment:
    config: RolloutConfig = dataclasses.replace(env.config, evidence=mode)
    return dataclasses.replace(env, config=config)


def sample_candidates(env: Environment, params, contexts: Sequence[Sequence[Turn]], rng: jax.Array,
                      n: int) -> list[list[tuple[Rollout, str]]]:
    """N (rollout, evidence mode) per context: two `rollout` calls of len(contexts) * N/2 rows each."""
    half = n // 2
    repeated = [c for c in contexts for _ in range(half)]  # row i * half + j = context i, candidate j
    out: list[list[tuple[Rollout, str]]] = [[] for _ in contexts]
    for key, mode in enumerate(("always", "never")):
        batch = rollout(_with_evidence(env, mode), params, repeated, jax.random.fold_in(rng, key))
        for row, step in enumerate(batch.rollouts):
            out[row // half].append((step, mode))
    return out


def best_of_n(env: Environment, params, scorer, contexts: Sequence[Sequence[Turn]], rng: jax.Array,
              config: RerankConfig = RerankConfig()) -> list[Reranked]:
    """Sample N candidates per context, score them with `scorer` (an `evaluation.scoring.Scorer` or
    anything with `pref_elo(dialogues) -> [M]` and `rule_probs(dialogues) -> [M, R]`), keep the best."""
    sampled = sample_candidates(env, params, contexts, rng, config.n)
    flat = [step for per_context in sampled for step, _ in per_context]
    dialogues = [step.dialogue for step in flat]
    b, n = len(contexts), config.n
    elo_BxN = np.asarray(scorer.pref_elo(dialogues)).reshape(b, n)
    p_BxNxR = np.asarray(scorer.rule_probs(dialogues)).reshape(b, n, -1)
    malformed_BxN = np.asarray([step.malformed is not None for step in flat]).reshape(b, n)
    best_B, log_scores_BxN = rank_candidates(elo_BxN, p_BxNxR, config, malformed_BxN)
    return [Reranked(tuple(Candidate(step, mode, float(elo_BxN[i, j]), p_BxNxR[i, j],
                                     float(log_scores_BxN[i, j]))
                           for j, (step, mode) in enumerate(sampled[i])), int(best_B[i]))
            for i in range(b)]
