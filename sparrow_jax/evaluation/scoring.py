"""Score whole dialogues with an agent's reward models, in fixed-shape batches.

A dialogue (context + the agent's new turns) is rendered as the RMs saw their training data
(`render`, then `truncate_left` to the RM's `train.seq_len`, right-padded) and scored:
  pref Elo:  the preference RM at the eot of the final turn (the Sparrow turn being judged);
  p_broken:  P(rule broken) for every rule of `agent.rules` (`rule_violation_probs`: the dialogue is
             encoded once and shared by all rules).
Identical dialogues are scored once. Rows go in batches of `batch_size` (fewer rows: the next power of
two), the last one padded with copies of the first row (dropped after), so each scorer compiles for a
handful of shapes only.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

from sparrow_jax.dialogue import render as render_lib
from sparrow_jax.dialogue.turns import Turn
from sparrow_jax.evaluation.agent import Agent, train_hint
from sparrow_jax.model.spec import ModelSpec
from sparrow_jax.rewards.pref_scoring import pref_elo
from sparrow_jax.rewards.rule_scoring import (group_rules_by_length, prepare_rule_suffixes,
                                              rule_violation_probs)


class MissingRewardModel(ValueError):
    """An operation needs a reward model the agent was loaded without."""


def render_rows(dialogues: Sequence[Sequence[Turn]], tokenizer, seq_len: int,
                bucket: int = 64) -> dict[str, np.ndarray]:
    """Right-padded rows: tokens_BxL int32, valid_BxL bool, last_index_B int32 (final turn's eot),
    turn_start_B int32 (final turn's role token).

    Each dialogue is cut from the left to `seq_len` tokens; L = the longest rounded up to a multiple of
    `bucket` (at most seq_len), so short dialogues cost less and only a few widths ever compile.
    """
    rendered = [render_lib.truncate_left(render_lib.render(tuple(t), tokenizer), seq_len)[0]
                for t in dialogues]
    longest = max((len(r) for r in rendered), default=1)
    width = min(seq_len, -(-longest // bucket) * bucket)
    b = len(dialogues)
    tokens = np.full((b, width), tokenizer.pad_id, np.int32)
    valid = np.zeros((b, width), bool)
    last = np.zeros(b, np.int32)
    start = np.zeros(b, np.int32)
    for row, rendered in enumerate(rendered):
        n = len(rendered)
        tokens[row, :n] = rendered.token_ids
        valid[row, :n] = True
        if rendered.turn_spans:
            start[row], end = rendered.turn_spans[-1]
            last[row] = end - 1
    return {"tokens_BxL": tokens, "valid_BxL": valid, "last_index_B": last, "turn_start_B": start}


def _padded_batches(rows: dict[str, np.ndarray], batch_size: int):
    """Yield (batch dict of exactly batch_size rows, number of real rows)."""
    n = len(next(iter(rows.values())))
    batch_size = min(batch_size, 1 << max(n - 1, 0).bit_length())
    for start in range(0, n, batch_size):
        real = min(batch_size, n - start)
        batch = {}
        for key, array in rows.items():
            chunk = array[start:start + real]
            if real < batch_size:
                chunk = np.concatenate([chunk, np.repeat(array[:1], batch_size - real, axis=0)])
            batch[key] = chunk
        yield batch, real


def unique_dialogues(dialogues: Sequence[Sequence[Turn]]) -> tuple[list[tuple], np.ndarray]:
    """(distinct dialogues in first-seen order, index_B into them): scores[index_B] undoes it."""
    first: dict[tuple, int] = {}
    index = np.asarray([first.setdefault(tuple(d), len(first)) for d in dialogues], np.int64)
    return list(first), index


@functools.lru_cache(maxsize=8)
def _elo_fn(spec: ModelSpec):
    return jax.jit(lambda params, tokens, valid, last, start: pref_elo(params, spec, tokens, valid,
                                                                      last, start))


@functools.lru_cache(maxsize=8)
def _rule_fn(spec: ModelSpec, rule_chunk: int | None, rule_groups: tuple):
    return jax.jit(lambda params, tokens, valid, rule_tokens, rule_valid: rule_violation_probs(
        params, spec, tokens, valid, rule_tokens, rule_valid, rule_chunk=rule_chunk,
        rule_groups=rule_groups))


class Scorer:
    """Batched reward-model scores for one agent (see the module docstring).

    batch_size / rule_batch_size: dialogues per compiled call of the preference / rule RM (the rule RM
    runs dialogues x rules rows, so fewer dialogues).  rule_chunk: rules per step of the rule RM (bounds
    the shared-prefix cache at rule_batch_size * rule_chunk rows); None = all rules at once. One at a
    time was fastest on the 2-core CPU (tiny_cpu, 8 dialogues x 23 rules: 1.21 s at once, 0.88 s).
    """

    def __init__(self, agent: Agent, batch_size: int = 32, rule_batch_size: int = 8,
                 rule_chunk: int | None = 1):
        self.agent = agent
        self.batch_size = batch_size
        self.rule_batch_size = rule_batch_size
        self.rule_chunk = rule_chunk
        self.spec = ModelSpec.of(agent.model_cfg)
        self._rule_suffixes = None

    @property
    def rule_ids(self) -> list[str]:
        return [r.id for r in self.agent.rules]

    def require(self, role: str) -> None:
        """Raise MissingRewardModel (saying where to get one) unless the agent has `role`."""
        if role not in self.agent.params:
            raise MissingRewardModel(
                f"no {role} reward model for {self.agent.workdir}: pass --{role.replace('_', '-')} DIR, or "
                f"train one next to it with {train_hint(role, self.agent.workdir + '/../' + role)}")

    def pref_elo(self, dialogues: Sequence[Sequence[Turn]]) -> np.ndarray:
        """float32 [B]: the preference RM's Elo of each dialogue's final turn."""
        self.require("pref_rm")
        if not dialogues:
            return np.zeros(0, np.float32)
        dialogues, index = unique_dialogues(dialogues)
        rows = render_rows(dialogues, self.agent.tokenizer, self.agent.pref_seq_len)
        fn = _elo_fn(self.spec)
        params = {k: self.agent.params[k] for k in ("trunk", "pref_rm")}
        out = [np.asarray(fn(params, b["tokens_BxL"], b["valid_BxL"], b["last_index_B"],
                             b["turn_start_B"]))[:real]
               for b, real in _padded_batches(rows, self.batch_size)]
        return np.concatenate(out).astype(np.float32)[index]

    def rule_probs(self, dialogues: Sequence[Sequence[Turn]]) -> np.ndarray:
        """float32 [B, R]: P(rule broken) of each dialogue for every rule (`rule_ids` order)."""
        self.require("rule_rm")
        if not dialogues:
            return np.zeros((0, len(self.agent.rules)), np.float32)
        if self._rule_suffixes is None:
            # The shortest width that holds every rule (padding after the read slot changes nothing).
            suffixes = prepare_rule_suffixes(self.agent.rules, self.agent.tokenizer, multiple=8)
            self._rule_suffixes = (*suffixes, group_rules_by_length(suffixes[1]))
        rule_tokens, rule_valid, rule_groups = self._rule_suffixes
        dialogues, index = unique_dialogues(dialogues)
        rows = render_rows(dialogues, self.agent.tokenizer, self.agent.rule_seq_len)
        fn = _rule_fn(self.spec, self.rule_chunk, rule_groups)
        params = {k: self.agent.params[k] for k in ("trunk", "rule_rm")}
        out = [np.asarray(fn(params, b["tokens_BxL"], b["valid_BxL"], rule_tokens, rule_valid))[:real]
               for b, real in _padded_batches(rows, self.rule_batch_size)]
        return np.concatenate(out).astype(np.float32)[index]
