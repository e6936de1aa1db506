"""Reranking @N: score N sampled candidates with both reward models, keep the best.

Formulas (the `formula` knob; docs/recipe.md section 7 [likely]):
  sparrow    sigmoid(elo - mean_elo) * (prod_i (1 - p_i)) ** (1/R)
  elo_only   sigmoid(elo - mean_elo)
  rules_only (prod_i (1 - p_i)) ** (1/R)
where p_i = P(rule i broken) from the rule RM and R = number of rules. The
product of R probabilities underflows and a direct sigmoid saturates, so the
score is computed in log space: log_sigmoid(elo - mean_elo) + mean_i log1p(-p_i).

Shapes: any leading batch dims, then N candidates: elo_...xN, p_broken_...xNxR.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["FORMULAS", "rerank_log_scores", "rerank_scores", "pick_best", "rerank"]

FORMULAS = ("sparrow", "elo_only", "rules_only")


def rerank_log_scores(elo_N, p_broken_NxR, mean_elo=0.0, formula: str = "sparrow"):
    """float32 [..., N]: the log of `rerank_scores` (-inf when a rule is surely broken).

    Args:
      elo_N: preference RM Elo of each candidate, [..., N].
      p_broken_NxR: P(rule broken) per candidate and rule, [..., N, R]; clipped to [0, 1].
      mean_elo: scalar, or broadcastable to elo_N (e.g. [B, 1]).
      formula: one of FORMULAS.
    """
    if formula not in FORMULAS:
        raise ValueError(f"unknown rerank formula {formula!r}; expected one of {FORMULAS}")
    elo = jnp.asarray(elo_N, jnp.float32)
    log_score = jnp.zeros_like(elo)
    if formula in ("sparrow", "elo_only"):
        log_score = log_score + jax.nn.log_sigmoid(elo - jnp.asarray(mean_elo, jnp.float32))
    if formula in ("sparrow", "rules_only"):
        p = jnp.clip(jnp.asarray(p_broken_NxR, jnp.float32), 0.0, 1.0)
        log_score = log_score + jnp.mean(jnp.log1p(-p), axis=-1)
    return log_score


def rerank_scores(elo_N, p_broken_NxR, mean_elo=0.0, formula: str = "sparrow"):
    """float32 [..., N] in [0, 1]: exp(rerank_log_scores(...)); see the module docstring."""
    return jnp.exp(rerank_log_scores(elo_N, p_broken_NxR, mean_elo, formula))


def pick_best(scores_N):
    """int32 [...]: index of the highest score over the last axis (first one on ties).

    Works on scores or log scores (the order is the same).
    """
    return jnp.argmax(jnp.asarray(scores_N), axis=-1).astype(jnp.int32)


def rerank(elo_N, p_broken_NxR, mean_elo=0.0, formula: str = "sparrow"):
    """(best index int32 [...], log scores float32 [..., N]).

    Picks on log scores, which keep their order where exp() would underflow to 0.
    """
    log_scores = rerank_log_scores(elo_N, p_broken_NxR, mean_elo, formula)
    return pick_best(log_scores), log_scores
