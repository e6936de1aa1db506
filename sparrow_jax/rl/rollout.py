"""The RL environment: extend a batch of dialogues by one agent step, searching when the agent chooses to.

Host-side Python orchestrates turns; the jitted sampler draws the tokens. One step for a batch of
contexts (each a sequence of Turns, usually ending with a User turn), in at most two sampler calls:
  1. `sampler.sample_step` encodes the dialogue once, picks the speaker per row by the evidence mode
       always: Search Query;  never: Sparrow;
       choose: the likelier of the Search Query and Sparrow role tokens (ties: Sparrow);
       free:   drawn from those two (temperature `role_temperature`),
     and, on the same cache, samples each row's turn: the query of a row that searches, the Sparrow
     turn of a row that does not (so a row that answers directly pays for no query);
  2. for the rows that searched, the environment runs the engine and inserts a Search Result turn:
     `format_evidence` of the top result, or `no_results_text` with the episode flagged malformed
     "no_results"; then those rows (only) sample their Sparrow turn after the evidence, their
     prompt cut to the width as a whole: in calls of half the batch when at most half the rows
     search (`sampler_calls.sample_live`; a row draws the same tokens in any call, by its row id).
With `parallel_calls` P > 1 (`rl.parallel`), step 1 runs as P calls of B/P rows side by side
and the live rows' calls are B/(2P) wide, P at a time: the tokens are the same.
Malformed kinds (the format penalty reads them): a policy turn that is empty ("empty"), has no eot within
max_new_tokens ("over_length"), holds a control id ("control_token"), or a query with no results
("no_results"); an episode's flag is the first of its step, in turn order.

Prompts are left-padded to a FIXED width `max_prompt_len`; a context too long for it is cut from the left
keeping whole final turns (`sequence.cut_left`), counted per row. A call then runs at the narrowest of
`RolloutConfig.widths` (`rl.prompt_buckets`) that holds its prompts, which drops only padding: one
compilation per batch size and width (`sampler_calls.compile_prompt_widths` makes them all before a
run). The calls themselves are `rl.sampler_calls`.
RNG: the role draw uses fold_in(rng, 0), the query fold_in(rng, 1), the Sparrow turn fold_in(rng, 2) (in
either call: a row's draws do not depend on which call samples it), a `sample_turns` call
fold_in(rng, 3); a seed gives the same rollouts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from sparrow_jax import distributed
from sparrow_jax.data.jsonl import clean_text
from sparrow_jax.dialogue.tokenizer import Tokenizer
from sparrow_jax.dialogue.turns import Dialogue, Role, Turn
from sparrow_jax.rl import lengths, phases
from sparrow_jax.rl import sequence as seq_lib
from sparrow_jax.rl.sequence import Block
from sparrow_jax.rl.sampler_calls import sample_blocks, speak
from sparrow_jax.sampling.sampler import SamplingConfig, TokenIds
from sparrow_jax.sampling.turns import SampledTurn
from sparrow_jax.search import SearchEngine, format_evidence

EVIDENCE_MODES = ("always", "never", "choose", "free")
NO_RESULTS = "no_results"


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """evidence: one of EVIDENCE_MODES.  max_prompt_len: prompt width in tokens (bos and the open role
    token included).  agent / query / user: sampling knobs per turn kind (query, user default to agent's;
    equal configs share one compilation).  role_temperature: the `free` mode's speaker temperature.
    no_results_text: the Search Result text when the engine finds nothing.  prompt_widths: narrower
    prompt widths a sampler call may run at (`widths`)."""
    evidence: str = "choose"
    max_prompt_len: int = 512
    agent: SamplingConfig = SamplingConfig()
    query: SamplingConfig | None = None
    user: SamplingConfig | None = None
    role_temperature: float = 1.0
    no_results_text: str = "No results."
    prompt_widths: tuple[int, ...] = ()

    def __post_init__(self):
        if self.evidence not in EVIDENCE_MODES:
            raise ValueError(f"evidence must be one of {EVIDENCE_MODES}, got {self.evidence!r}")
        if self.max_prompt_len < 4:
            raise ValueError(f"max_prompt_len must be >= 4, got {self.max_prompt_len}")
        if not all(0 < w <= self.max_prompt_len for w in self.prompt_widths):
            raise ValueError(f"prompt_widths must be in (0, max_prompt_len={self.max_prompt_len}], "
                             f"got {self.prompt_widths}")

    @classmethod
    def from_rl_config(cls, r, evidence: str | None = None) -> "RolloutConfig":
        """From a config's `rl` section (evidence mode, prompt width, sampling knobs);
        `evidence` overrides `rl.evidence`."""
        agent = SamplingConfig(max_new_tokens=int(r.max_new_tokens), temperature=float(r.temperature),
                               top_p=float(r.top_p), top_k=int(r.top_k))
        return cls(evidence=evidence or r.evidence, max_prompt_len=int(r.max_prompt_len), agent=agent,
                   role_temperature=float(r.role_temperature),
                   prompt_widths=lengths.prompt_widths(r)[:-1])

    @property
    def widths(self) -> tuple[int, ...]:
        """The prompt widths a sampler call may run at, ascending, ending with max_prompt_len:
        a call runs at the narrowest holding its longest prompt (`rl.sampler_calls`)."""
        return tuple(sorted(set(self.prompt_widths) | {self.max_prompt_len}))

    @property
    def query_config(self) -> SamplingConfig:
        return self.query or self.agent

    @property
    def user_config(self) -> SamplingConfig:
        return self.user or self.agent

    @property
    def max_seq_len(self) -> int:
        """Bound on a training sequence: the Sparrow prompt + its text + an eot."""
        return self.max_prompt_len + self.agent.max_new_tokens + 1


@dataclasses.dataclass(frozen=True, eq=False)
class Environment:
    """What a rollout needs besides params: model config, tokenizer, search engine, knobs.

    ids: the sampler's special ids (default `TokenIds.from_tokenizer`).  mesh/rules: the sampler's mesh and
    logical-axis rules (its decode layout, `sampling/layout.py`).  row_rules: the rules whose 'batch' rule
    says which rows of the global batch each process hands in (the training rules; default `rules`). With a
    mesh, the contexts a process passes are its own rows. parallel_calls: part-batch sampler calls run side by
    side (`rl.parallel.parallel_calls`; 1 = one call at a time).
    """
    model_cfg: Any
    tokenizer: Tokenizer
    engine: SearchEngine
    config: RolloutConfig = RolloutConfig()
    ids: TokenIds | None = None
    mesh: Any = None
    rules: Any = None
    row_rules: Any = None
    parallel_calls: int = 1

    @property
    def token_ids(self) -> TokenIds:
        return self.ids or TokenIds.from_tokenizer(self.tokenizer)


@dataclasses.dataclass(frozen=True)
class Rollout:
    """One row's step.

    context: the turns given.  new_turns: (Search Query, Search Result,)? Sparrow.
    searched: a Search Query was written.  malformed: None or the kind (module docstring).
    truncated: the context was cut from the left for some prompt of this step.
    sequence: the training sequence (`sequence.Assembled`): the (cut) Sparrow prompt with the query and
      result as sampled/inserted, then the Sparrow turn; masks only on this step's policy turns.
    reward_index: index in the sequence of the final Sparrow turn's eot (where the reward lands).
    """
    context: Dialogue
    new_turns: Dialogue
    searched: bool
    malformed: str | None
    truncated: bool
    sequence: seq_lib.Assembled
    reward_index: int

    @property
    def dialogue(self) -> Dialogue:
        return tuple(self.context) + tuple(self.new_turns)


@dataclasses.dataclass(frozen=True)
class RolloutBatch:
    """rollouts: one per context.  role_logprobs_Bx2: float32 full-vocabulary log-probs of
    (Search Query, Sparrow) as next token (choose/free modes; None otherwise).  num_cut: rows cut."""
    rollouts: tuple[Rollout, ...]
    role_logprobs_Bx2: np.ndarray | None
    num_cut: int

    def __len__(self) -> int:
        return len(self.rollouts)

    def training_arrays(self, length: int | None = None, pad_id: int = 0) -> dict[str, np.ndarray]:
        """RIGHT-padded arrays for a training forward (L = `length`, default the longest sequence):
        tokens_BxL i32, positions_BxL i32 (arange, 0 on pads), valid_BxL, policy_mask_BxL,
        sampled_mask_BxL, role_ids_BxL i8 (-1 bos/pad), behaviour_logprobs_BxL f32, reward_index_B i32,
        turn_start_B i32 (the final Sparrow turn's role token), searched_B, malformed_B (bool), truncated_B."""
        seqs = [r.sequence for r in self.rollouts]
        length = length or max(len(s) for s in seqs)
        b = len(seqs)
        out = {"tokens_BxL": np.full((b, length), pad_id, np.int32),
               "positions_BxL": np.zeros((b, length), np.int32),
               "valid_BxL": np.zeros((b, length), bool),
               "policy_mask_BxL": np.zeros((b, length), bool),
               "sampled_mask_BxL": np.zeros((b, length), bool),
               "role_ids_BxL": np.full((b, length), -1, np.int8),
               "behaviour_logprobs_BxL": np.zeros((b, length), np.float32)}
        for row, s in enumerate(seqs):
            n = len(s)
            if n > length:
                raise ValueError(f"row {row}: sequence of {n} tokens does not fit length {length}")
            out["tokens_BxL"][row, :n] = s.token_ids_L
            out["positions_BxL"][row, :n] = np.arange(n)
            out["valid_BxL"][row, :n] = True
            out["policy_mask_BxL"][row, :n] = s.policy_mask_L
            out["sampled_mask_BxL"][row, :n] = s.sampled_mask_L
            out["role_ids_BxL"][row, :n] = s.role_ids_L
            out["behaviour_logprobs_BxL"][row, :n] = s.behaviour_logprobs_L
        out["reward_index_B"] = np.asarray([r.reward_index for r in self.rollouts], np.int32)
        out["turn_start_B"] = np.asarray([r.sequence.turn_spans[-1][0] for r in self.rollouts], np.int32)
        out["searched_B"] = np.asarray([r.searched for r in self.rollouts], bool)
        out["malformed_B"] = np.asarray([r.malformed is not None for r in self.rollouts], bool)
        out["truncated_B"] = np.asarray([r.truncated for r in self.rollouts], bool)
        return out


def sample_turns(env: Environment, params, contexts: Sequence[Sequence[Turn]], role: Role | str,
                 rng: jax.Array, config: SamplingConfig | None = None, live_B=None
                 ) -> tuple[list[SampledTurn], list[bool]]:
    """One sampled `role` turn per context (e.g. the LM playing the User in self-play); only
    the `live_B` rows if given (the others' turns are empty and meaningless).

    Returns (SampledTurns with malformed flags, was_cut per row). Uses fold_in(rng, 3).
    """
    role = Role(role)
    config = config or (env.config.user_config if role == Role.USER else env.config.agent)
    rows = [seq_lib.context_blocks(c, env.tokenizer) for c in contexts]
    _, turns, was_cut = sample_blocks(env, params, rows, role, jax.random.fold_in(rng, 3), config,
                                       live_B)
    return turns, was_cut


def sampled_length(turn: SampledTurn) -> int:
    """Tokens the sampler drew for a kept turn: its text and, if it ended, the eot."""
    return len(turn.text_ids) + int(turn.finished)


def _first(*kinds):
    return next((k for k in kinds if k is not None), None)


# ---------------------------------------------------------------------------- the step

def rollout(env: Environment, params, contexts: Sequence[Sequence[Turn]], rng: jax.Array
            ) -> RolloutBatch:
    """Extend every context by one agent step (module docstring). Deterministic for (params, rng)."""
    if not contexts:
        raise ValueError("rollout needs at least one context")
    tok, cfg = env.tokenizer, env.config
    rows = [seq_lib.context_blocks(c, tok) for c in contexts]
    search_B, role_logprobs, role_lp_B, first, cut_B = speak(env, params, rows, rng)
    malformed: list[str | None] = [None] * len(rows)
    new_turns: list[list[Turn]] = [[] for _ in rows]
    answers = [None if search_B[row] else first[row] for row in range(len(rows))]
    for row in np.flatnonzero(search_B):
        block, query = first[row]
        if role_lp_B is not None:
            block = dataclasses.replace(block, role_logprob=float(role_lp_B[row]))
        with phases.phase("search"):
            results = env.engine.search(query.turn.text, k=1)
        # An engine's text (any SearchEngine, maybe a remote one) passes the boundary rule.
        evidence = clean_text(format_evidence(results[0])) if results else cfg.no_results_text
        malformed[row] = _first(query.malformed, None if results else NO_RESULTS)
        rows[row] = rows[row] + [block, Block(Role.SEARCH_RESULT, tuple(tok.encode_turn(evidence)),
                                              new=True)]
        new_turns[row] += [query.turn, Turn(Role.SEARCH_RESULT, evidence)]
    if distributed.any_process(search_B.any()):
        # The decision is every process's alike: the sampler is one program over all of them.
        a_blocks, a_turns, a_cut = sample_blocks(env, params, rows, Role.AGENT,
                                                  jax.random.fold_in(rng, 2), cfg.agent,
                                                  live_B=search_B)
        for row in np.flatnonzero(search_B):
            answers[row] = (a_blocks[row], a_turns[row])
            cut_B[row] = cut_B[row] or a_cut[row]
    budget = cfg.max_prompt_len - 2
    rollouts = []
    for row, (blocks, (a_block, a_turn)) in enumerate(zip(rows, answers)):
        if role_lp_B is not None and not search_B[row]:
            a_block = dataclasses.replace(a_block, role_logprob=float(role_lp_B[row]))
        kept, _ = seq_lib.cut_left(blocks, budget)  # exactly the Sparrow prompt the sampler saw
        sequence = seq_lib.assemble(kept + [a_block], tok)
        new_turns[row].append(a_turn.turn)
        phases.count("generated_tokens", sampled_length(a_turn) + (
            sampled_length(first[row][1]) if search_B[row] else 0))
        rollouts.append(Rollout(
            context=tuple(contexts[row]), new_turns=tuple(new_turns[row]), searched=bool(search_B[row]),
            malformed=_first(malformed[row], a_turn.malformed), truncated=bool(cut_B[row]),
            sequence=sequence, reward_index=len(sequence) - 1))
    return RolloutBatch(tuple(rollouts), role_logprobs, sum(r.truncated for r in rollouts))
