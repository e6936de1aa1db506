"""The per-agent-turn RL reward (docs/recipe.md section 6) [ours, following the seed]:

    reward = elo_weight * normalise(elo)
           + rule_weight * aggregate(p_broken over the N rules)
           - format_penalty * malformed

Rule aggregations (the `aggregation` knob):
  mean_compliance      (1/N) sum_i (1 - p_i)               in [0, 1]
  mean_log_compliance  (1/N) sum_i log(1 - p_i + eps)      in [log eps, log(1 + eps)]
The format penalty (2.0, as GopherCite) applies to malformed turns or searches.
Every component is returned separately for logging.
"""
from __future__ import annotations

import jax.numpy as jnp

from sparrow_jax.rewards.pref_scoring import EloNormaliser

__all__ = ["turn_reward", "aggregate_rules", "AGGREGATIONS", "DEFAULT_RULE_WEIGHT",
           "DEFAULT_FORMAT_PENALTY", "DEFAULT_EPS"]

AGGREGATIONS = ("mean_compliance", "mean_log_compliance")
DEFAULT_RULE_WEIGHT = 1.0  # [ours]: one unit of normalised Elo per unit of mean compliance
DEFAULT_FORMAT_PENALTY = 2.0  # [paper, GopherCite]
DEFAULT_EPS = 1e-6


def aggregate_rules(p_broken_BxR, aggregation: str = "mean_compliance", eps: float = DEFAULT_EPS,
                    rule_mask_BxR=None):
    """float32 [B]: the rule term before weighting (see the module docstring).

    `rule_mask_BxR` (bool, default all True) picks the rules that count; N is the
    number of counted rules per row, and a row with none gets 0.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown rule aggregation {aggregation!r}; "
                         f"expected one of {AGGREGATIONS}")
    p = jnp.clip(jnp.asarray(p_broken_BxR, jnp.float32), 0.0, 1.0)
    mask = jnp.ones(p.shape, bool) if rule_mask_BxR is None else jnp.asarray(rule_mask_BxR, bool)
    per_rule = 1.0 - p
    if aggregation == "mean_log_compliance":
        # The max (a no-op, p <= 1) stops XLA from rewriting (1 - p) + eps as (1 + eps) - p,
        # which rounds eps away in float32 (log(1e-6) would become log(9.5e-7)).
        per_rule = jnp.log(jnp.maximum(per_rule, 0.0) + eps)
    total_B = jnp.sum(jnp.where(mask, per_rule, 0.0), axis=-1)
    n_B = jnp.sum(mask, axis=-1)
    return jnp.where(n_B > 0, total_B / jnp.maximum(n_B, 1), 0.0)


def turn_reward(elo_B, p_broken_BxR, malformed_B, normaliser: EloNormaliser | None = None, *,
                aggregation: str = "mean_compliance", rule_weight: float = DEFAULT_RULE_WEIGHT,
                format_penalty: float = DEFAULT_FORMAT_PENALTY, elo_weight: float = 1.0,
                eps: float = DEFAULT_EPS, rule_mask_BxR=None) -> dict:
    """The reward of B agent turns and its components, each float32 [B].

    Args:
      elo_B: preference RM Elo of each turn (`pref_scoring.pref_elo`).
      p_broken_BxR: P(rule broken) for each of R rules (`rule_scoring.rule_violation_probs`).
      malformed_B: bool, the turn or its search was malformed.
      normaliser: mean/std of the starting policy's Elo; None = use the raw Elo.
      aggregation: "mean_compliance" (default) or "mean_log_compliance".
      rule_weight: weight of the rule term (default 1.0 [ours]).
      format_penalty: subtracted for a malformed turn (default 2.0, as GopherCite).
      elo_weight: weight of the normalised Elo (default 1.0).
      eps: inside log(1 - p + eps) for mean_log_compliance.
      rule_mask_BxR: which rules count for each turn (default all).
    Returns:
      {'reward', 'elo', 'elo_normalised', 'rule_compliance' (the aggregate, unweighted),
       'rule_term' (weighted), 'format_penalty' (the amount subtracted), 'malformed'}.
    """
    elo = jnp.asarray(elo_B, jnp.float32)
    elo_normalised = normaliser.normalise(elo) if normaliser is not None else elo
    compliance = aggregate_rules(p_broken_BxR, aggregation, eps, rule_mask_BxR)
    malformed = jnp.asarray(malformed_B, bool)
    rule_term = rule_weight * compliance
    penalty = jnp.where(malformed, jnp.float32(format_penalty), 0.0)
    reward = elo_weight * elo_normalised + rule_term - penalty
    return {"reward": reward.astype(jnp.float32), "elo": elo,
            "elo_normalised": jnp.asarray(elo_normalised, jnp.float32),
            "rule_compliance": compliance, "rule_term": rule_term.astype(jnp.float32),
            "format_penalty": penalty.astype(jnp.float32),
            "malformed": malformed.astype(jnp.float32)}
