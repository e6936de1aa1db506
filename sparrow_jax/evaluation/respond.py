"""One agent reply to a live dialogue (what `sparrow chat` runs each turn), with its RM scores.

    reply = respond(agent, env, history, rng, scorer=scorer, n_best=4)
    history = history + reply.new_turns

n_best 1: one `rollout` step in the environment's evidence mode; N >= 2: `best_of_n`. When the agent has
both reward models, every candidate carries its pref Elo and P(broken) per rule (for --verbose).
The user's text reaches the model only as the text of a User turn: role ids are inserted by id, never
parsed from text, so a user cannot write a Search Result or Sparrow turn.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from sparrow_jax.dialogue.turns import Dialogue, Turn
from sparrow_jax.evaluation.agent import Agent
from sparrow_jax.evaluation.reranking import RerankConfig, best_of_n
from sparrow_jax.rl.rollout import Environment, rollout


@dataclasses.dataclass(frozen=True)
class CandidateView:
    """A candidate as shown: its new turns, evidence mode ("always", "never" or the env's), malformed kind,
    pref Elo and P(broken) per rule (None without the RMs), log rerank score (None without reranking)."""
    new_turns: Dialogue
    evidence: str
    malformed: str | None
    elo: float | None
    p_broken: dict[str, float] | None
    log_score: float | None


@dataclasses.dataclass(frozen=True)
class Reply:
    """new_turns: the chosen candidate's turns (Search Query, Search Result,)? Sparrow.
    candidates: every candidate (one without reranking).  chosen: index of the chosen one."""
    new_turns: Dialogue
    candidates: tuple[CandidateView, ...]
    chosen: int


def _rule_dict(rule_ids: Sequence[str], p_broken_R) -> dict[str, float]:
    return {rule: float(p) for rule, p in zip(rule_ids, np.asarray(p_broken_R))}


def respond(agent: Agent, env: Environment, history: Sequence[Turn], rng: jax.Array, *, scorer=None,
            n_best: int = 1, formula: str = "sparrow") -> Reply:
    """The agent's next step after `history` (usually ending with a User turn)."""
    history = tuple(history)
    if n_best > 1:
        ranked = best_of_n(env, agent.params, scorer, [history], rng, RerankConfig(n_best, formula))[0]
        views = tuple(CandidateView(c.rollout.new_turns, c.evidence, c.rollout.malformed, c.elo,
                                    _rule_dict(scorer.rule_ids, c.p_broken_R), c.log_score)
                      for c in ranked.candidates)
        return Reply(ranked.best.rollout.new_turns, views, ranked.best_index)
    step = rollout(env, agent.params, [history], rng).rollouts[0]
    elo = p_broken = None
    if scorer is not None and agent.has_pref_rm and agent.has_rule_rm:
        elo = float(scorer.pref_elo([step.dialogue])[0])
        p_broken = _rule_dict(scorer.rule_ids, scorer.rule_probs([step.dialogue])[0])
    view = CandidateView(step.new_turns, env.config.evidence, step.malformed, elo, p_broken, None)
    return Reply(step.new_turns, (view,), 0)
