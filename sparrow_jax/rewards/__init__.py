"""Reward-model scoring and the RL reward.

`rule_scoring`: P(rule broken) for every (dialogue, rule) pair, the dialogue prefix
encoded once and shared by all rules. `pref_scoring`: preference RM Elo and its
normaliser. `reward`: the per-agent-turn RL reward and its components.
"""
from sparrow_jax.rewards.pref_scoring import EloNormaliser, pref_elo
from sparrow_jax.rewards.reward import aggregate_rules, turn_reward
from sparrow_jax.rewards.rule_scoring import (group_rules_by_length, prepare_rule_suffixes,
                                              rule_violation_probs,
                                              rule_violation_probs_unshared)

__all__ = ["rule_violation_probs", "rule_violation_probs_unshared", "prepare_rule_suffixes",
           "group_rules_by_length",
           "pref_elo", "EloNormaliser", "turn_reward", "aggregate_rules"]
