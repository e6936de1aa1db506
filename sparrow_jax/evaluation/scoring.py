"""Score whole dialogues with an agent's reward models, in fixed-shape batches.

A dialogue (context + the agent's new turns) is rendered as the RMs saw their training data
(`render`, then `truncate_left` to the RM's `train.seq_len`, right-padded) and scored:
  pref Elo:  the preference RM at the eot of the final turn (the Sparrow turn being judged);
  p_broken:  P(rule broken) for every rule of `agent.rules` (`rule_violation_probs`: the dialogue is
             encoded once and shared by all rules).
Both are calibrated: each RM's logits are divided by the temperature fitted for its checkpoint at the
end of training (`train/calibration.py`; loaded with the RM by `load_agent`), so the Elo is elo / T_pref
(softmax over candidates, and the sigmoid of a difference as the rerank formula takes it, are calibrated
choice probabilities) and P(broken) = sigmoid(logit / T_rule). An RM without a fitted temperature is
scored at T = 1, which the scorer says once (stderr, when it first scores with that RM). This is the one scorer of RM scores at inference:
chat, reranking (`reranking.best_of_n`), the reward-model judge and win rates. Calibration is monotonic,
so rankings by Elo alone and win rates do not change, nor which held-out ratings the judge's threshold
(chosen on this scorer's own probabilities) separates; the rerank score, which mixes the two RMs, does. The RL reward (`rl/trainer.py`) keeps the
raw scores by design (docs/recipe.md).
Identical dialogues are scored once. Rows go in batches of `batch_size` (fewer rows: the next power of
two), the last one padded with copies of the first row (dropped after), so each scorer compiles for a
handful of shapes only.
"""
from __future__ import annotations

import functools
import sys
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
from sparrow_jax.train.calibration import calibrated_elo, calibrated_probs

_SAID: set[str] = set()  # uncalibrated-RM messages already printed (once per process)


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
    pref_temperature / rule_temperature: the calibration temperatures applied (module docstring);
    None (default) = the agent's, 1.0 when it has none. `notes`: which were applied, for reports.
    """

    def __init__(self, agent: Agent, batch_size: int = 32, rule_batch_size: int = 8,
                 rule_chunk: int | None = 1, pref_temperature: float | None = None,
                 rule_temperature: float | None = None):
        self.agent = agent
        self.batch_size = batch_size
        self.rule_batch_size = rule_batch_size
        self.rule_chunk = rule_chunk
        self.spec = ModelSpec.of(agent.model_cfg)
        self._rule_suffixes = None
        self.notes: tuple[str, ...] = ()
        self._uncalibrated: dict[str, str] = {}  # role -> its note, printed at first use
        self.pref_temperature = self._temperature("pref_rm", pref_temperature)
        self.rule_temperature = self._temperature("rule_rm", rule_temperature)

    def _temperature(self, role: str, given: float | None) -> float:
        if given is not None:
            if not given > 0:
                raise ValueError(f"a {role} temperature must be > 0, got {given}")
            return float(given)
        if role not in self.agent.params:
            return 1.0
        fitted = getattr(self.agent, f"{role}_temperature", None)
        source = getattr(self.agent, f"{role}_source", None) or role
        where = getattr(self.agent, f"{role}_temperature_source", "")
        if fitted is None:
            note = (f"{role} {source}: probabilities uncalibrated (temperature 1.0): {where or 'none fitted'}")
            self._uncalibrated[role] = note
            self.notes += (note,)
            return 1.0
        self.notes += (f"{role} {source}: calibrated with temperature {fitted:.4g} ({where})",)
        return float(fitted)

    @property
    def rule_ids(self) -> list[str]:
        return [r.id for r in self.agent.rules]

    def _say_uncalibrated(self, role: str) -> None:
        note = self._uncalibrated.get(role)
        if note and note not in _SAID:
            _SAID.add(note)
            print(note, file=sys.stderr, flush=True)

    def require(self, role: str) -> None:
        """Raise MissingRewardModel (saying where to get one) unless the agent has `role`."""
        if role not in self.agent.params:
            raise MissingRewardModel(
                f"no {role} reward model for {self.agent.workdir}: pass --{role.replace('_', '-')} DIR, or "
                f"train one next to it with {train_hint(role, self.agent.workdir + '/../' + role)}")

    def pref_elo(self, dialogues: Sequence[Sequence[Turn]]) -> np.ndarray:
        """float32 [B]: the preference RM's calibrated Elo (elo / pref_temperature) of each dialogue's
        final turn."""
        self.require("pref_rm")
        self._say_uncalibrated("pref_rm")
        if not dialogues:
            return np.zeros(0, np.float32)
        dialogues, index = unique_dialogues(dialogues)
        rows = render_rows(dialogues, self.agent.tokenizer, self.agent.pref_seq_len)
        fn = _elo_fn(self.spec)
        params = {k: self.agent.params[k] for k in ("trunk", "pref_rm")}
        out = [np.asarray(fn(params, b["tokens_BxL"], b["valid_BxL"], b["last_index_B"],
                             b["turn_start_B"]))[:real]
               for b, real in _padded_batches(rows, self.batch_size)]
        return calibrated_elo(np.concatenate(out), self.pref_temperature)[index]

    def rule_probs(self, dialogues: Sequence[Sequence[Turn]]) -> np.ndarray:
        """float32 [B, R]: calibrated P(rule broken) (sigmoid(logit / rule_temperature)) of each
        dialogue for every rule (`rule_ids` order)."""
        self.require("rule_rm")
        self._say_uncalibrated("rule_rm")
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
        return calibrated_probs(np.concatenate(out), self.rule_temperature)[index]
