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
     search (`_sample_live`; a row draws the same tokens in any call, by its row id).
With `parallel_calls` P > 1 (`rl.parallel`), step 1 runs as P calls of B/P rows side by side
and the live rows' calls are B/(2P) wide, P at a time: the tokens are the same.
Malformed kinds (the format penalty reads them): a policy turn that is empty ("empty"), has no eot within
max_new_tokens ("over_length"), holds a control id ("control_token"), or a query with no results
("no_results"); an episode's flag is the first of its step, in turn order.

Prompts are left-padded to a FIXED width `max_prompt_len`; a context too long for it is cut from the left
keeping whole final turns (`sequence.cut_left`), counted per row. A call then runs at the narrowest of
`RolloutConfig.widths` (`rl.prompt_buckets`) that holds its prompts, which drops only padding: one
compilation per batch size and width (`compile_prompt_widths` makes them all ahead of a run).
RNG: the role draw uses fold_in(rng, 0), the query fold_in(rng, 1), the Sparrow turn fold_in(rng, 2) (in
either call: a row's draws do not depend on which call samples it), a `sample_turns` call
fold_in(rng, 3); a seed gives the same rollouts.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import numpy as np

from sparrow_jax import distributed
from sparrow_jax.data.jsonl import clean_text
from sparrow_jax.dialogue.tokenizer import Tokenizer
from sparrow_jax.dialogue.turns import Dialogue, Role, Turn
from sparrow_jax.rl import lengths, parallel, phases
from sparrow_jax.rl import sequence as seq_lib
from sparrow_jax.rl.sequence import Block
from sparrow_jax.sampling import sampler
from sparrow_jax.sampling.sampler import SamplingConfig, TokenIds
from sparrow_jax.sampling.turns import SampledTurn, sampled_turns
from sparrow_jax.search import SearchEngine, format_evidence

EVIDENCE_MODES = ("always", "never", "choose", "free")
NO_RESULTS = "no_results"
_CHOICE_ROLES = (Role.SEARCH_QUERY, Role.AGENT)  # index 0 = search, 1 = answer directly
# The sampler's speaker choice (`sampler.sample_step`) per evidence mode.
_SPEAKER_CHOICE = {"always": "first", "never": "second", "choose": "choose", "free": "free"}


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
        a call runs at the narrowest holding its longest prompt (`_narrowest`)."""
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


# ---------------------------------------------------------------------------- helpers

def _prompts(env: Environment, rows: Sequence[list[Block]], open_role: Role | None, reserve: int = 1
             ) -> tuple[list[list[Block]], list[bool], np.ndarray, np.ndarray]:
    """Cut each row to fit the prompt width less bos and `reserve` slots (the open role token), assemble
    with `open_role`, left-pad: (cut rows, was_cut, tokens_BxP, valid_BxP)."""
    width = env.config.max_prompt_len
    budget = width - 1 - reserve
    cut = [seq_lib.cut_left(blocks, budget) for blocks in rows]
    seqs = [seq_lib.assemble(blocks, env.tokenizer, open_role).token_ids_L for blocks, _ in cut]
    tokens, valid = seq_lib.left_pad(seqs, width, env.tokenizer.pad_id)
    return [c[0] for c in cut], [c[1] for c in cut], tokens, valid


def _turn_blocks(env: Environment, roles: Sequence[Role], out) -> tuple[list[Block], list[SampledTurn]]:
    """A sampler output (host numpy) as one (Block, SampledTurn) per row, row b as roles[b]'s turn."""
    turns = sampled_turns(env.tokenizer, roles, out.tokens_BxN, out.token_valid_BxN)
    blocks = []
    for row, (role, st) in enumerate(zip(roles, turns)):
        lp = out.logprobs_BxN[row]
        n = len(st.text_ids)
        blocks.append(Block(role, st.text_ids, new=True, sampled_text=True,
                            text_logprobs=tuple(float(x) for x in lp[:n]),
                            eot_logprob=float(lp[n]) if st.finished else None))
    return blocks, turns


def _narrowest(env: Environment, tokens_BxP, valid_BxP, rows=None) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts cut to the narrowest of `env.config.widths` that holds the longest
    prompt among `rows` (default all) of every process (a call is one program over all of them):
    only padding is dropped, except in rows outside `rows`, which sample nothing."""
    lengths_B = np.asarray(valid_BxP).sum(axis=1)
    longest = int(lengths_B[slice(None) if rows is None else rows].max(initial=0))
    width = lengths.bucket_for(max(distributed.allgather_objects(longest)), env.config.widths)
    return tokens_BxP[:, -width:], valid_BxP[:, -width:]


def _count_call(width: int) -> None:
    """Count a sampler call of the rollout (its parts together) and its widest prompt width
    (`phases`: the benchmark's prefill estimate reads both)."""
    phases.count("sampler_calls")
    phases.count(f"sampler_calls_at_width_{width}")


def _speaker_parts(env: Environment, rows: int) -> int:
    """Part-batch calls of the speaker call of `rows` rows (`_speak`)."""
    return env.parallel_calls if rows % env.parallel_calls == 0 else 1


def _live_call_rows(env: Environment, rows: int) -> int:
    """Rows of each live-rows call of a batch of `rows` (`_sample_live`): B/(2P), or B."""
    parts = env.parallel_calls
    return rows // (2 * parts) if rows % (2 * parts) == 0 else rows


def _row_ids(env: Environment, rows: int) -> np.ndarray:
    return sampler.global_row_ids(rows, env.mesh, env.row_rules or env.rules)


def _sample_live(env: Environment, params, tokens_BxP, valid_BxP, rng, config: SamplingConfig,
                 live_B=None) -> sampler.SampleOutput:
    """`sampler.sample` of the `live_B` rows only (host numpy, all B rows; the others empty);
    live_B None = every row, in one call when `env.parallel_calls` is 1.

    Otherwise the live rows are sampled in calls of B/(2P) rows (P = `env.parallel_calls`; the
    live ones, then filler rows that sample nothing), P calls at a time, each row with its own
    row id, so it draws what it would in the whole batch; a decode step of fewer rows costs
    less. Every such call is one program at a width (`_narrowest`), and the number of calls
    follows the most live rows of any process: no compile depends on how many rows search or
    continue."""
    rows = len(tokens_BxP)
    parts, width = env.parallel_calls, _live_call_rows(env, rows)
    live = np.flatnonzero(np.ones(rows, bool) if live_B is None else np.asarray(live_B, bool))
    if (live_B is None and parts == 1) or width == rows:
        prompts = _narrowest(env, tokens_BxP, valid_BxP, live)
        _count_call(prompts[0].shape[1])
        return sampler.sample(params, env.model_cfg, *prompts, rng, config, env.token_ids,
                              live_B=live_B, mesh=env.mesh, rules=env.rules,
                              row_rules=env.row_rules)
    row_ids_B = _row_ids(env, rows)
    calls = -(-max(distributed.allgather_objects(len(live))) // width)
    n = config.max_new_tokens
    full = {"tokens_BxN": np.full((rows, n), env.token_ids.pad_id, np.int32),
            "token_valid_BxN": np.zeros((rows, n), bool),
            "logprobs_BxN": np.zeros((rows, n), np.float32),
            "lengths_B": np.zeros(rows, np.int32), "finished_B": np.zeros(rows, bool)}
    picks = [live[call * width:(call + 1) * width] for call in range(calls)]  # none: no call
    fillers = [np.concatenate([mine, np.zeros(width - len(mine), np.int64)]) for mine in picks]
    prompts = [_narrowest(env, tokens_BxP[pick], valid_BxP[pick], np.arange(len(mine)))
               for mine, pick in zip(picks, fillers)]
    if picks:
        _count_call(max(t.shape[1] for t, _ in prompts))

    def sample_rows(call):
        mine, pick = picks[call], fillers[call]
        return jax.device_get(sampler.sample(
            params, env.model_cfg, *prompts[call], rng, config,
            env.token_ids, live_B=np.arange(width) < len(mine), row_ids_B=row_ids_B[pick],
            mesh=env.mesh, rules=env.rules, row_rules=env.row_rules))

    outs = parallel.run([functools.partial(sample_rows, call) for call in range(calls)], parts)
    for mine, out in zip(picks, outs):
        for name, value in full.items():
            value[mine] = np.asarray(getattr(out, name))[:len(mine)]
    return sampler.SampleOutput(**full)


def _sample_blocks(env: Environment, params, rows: Sequence[list[Block]], role: Role, rng,
                   config: SamplingConfig, live_B=None
                   ) -> tuple[list[Block], list[SampledTurn], list[bool]]:
    """Sample one `role` turn per row (only the `live_B` rows, if given: the others' turns are
    empty and meaningless): (new blocks, SampledTurns, was_cut per row)."""
    _, was_cut, tokens, valid = _prompts(env, rows, role)
    with phases.phase("sample"):
        out = jax.device_get(_sample_live(env, params, tokens, valid, rng, config, live_B))
    blocks, turns = _turn_blocks(env, [role] * len(rows), out)
    return blocks, turns, was_cut


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
    _, turns, was_cut = _sample_blocks(env, params, rows, role, jax.random.fold_in(rng, 3), config,
                                       live_B)
    return turns, was_cut


def _speak(env: Environment, params, rows, rng):
    """Step 1 of the module docstring: (search_B bool, role_logprobs_Bx2 or None, sampled role
    log-prob_B or None, the first turn's (Block, SampledTurn) per row, was_cut_B)."""
    mode = env.config.evidence
    _, was_cut, tokens, valid = _prompts(env, rows, None, reserve=1)
    choice = _SPEAKER_CHOICE[mode]
    rows_n = len(rows)
    parts = _speaker_parts(env, rows_n)
    width, row_ids_B = rows_n // parts, _row_ids(env, rows_n)
    # Parts of rows by prompt length: the shortest prompts share a call, which may then run at
    # a narrower width (`_narrowest`). A row draws by its row id, in any part.
    order = np.argsort(valid.sum(axis=1), kind="stable") if parts > 1 else np.arange(rows_n)
    picks = [order[part * width:(part + 1) * width] for part in range(parts)]
    prompts = [_narrowest(env, tokens[pick], valid[pick]) for pick in picks]

    def step(part):  # one call of B/P rows (each row its own row id)
        pick = picks[part]
        return jax.device_get(sampler.sample_step(
            params, env.model_cfg, *prompts[part],
            [env.tokenizer.role_id(r) for r in _CHOICE_ROLES], choice,
            [jax.random.fold_in(rng, i) for i in range(3)],
            (env.config.query_config, env.config.agent), env.token_ids,
            env.config.role_temperature, row_ids_B=row_ids_B[pick], mesh=env.mesh,
            rules=env.rules, row_rules=env.row_rules))

    with phases.phase("sample"):
        outs = parallel.run([functools.partial(step, part) for part in range(parts)], parts)
        back = np.argsort(np.concatenate(picks))  # the parts' rows back in batch order
        out = jax.tree.map(lambda *xs: np.concatenate(xs)[back], *outs)
    _count_call(max(t.shape[1] for t, _ in prompts))
    index_B = np.asarray(out.role_index_B)
    blocks, turns = _turn_blocks(env, [_CHOICE_ROLES[i] for i in index_B], out.turn)
    logprobs = None if mode in ("always", "never") else np.asarray(out.role_logprobs_Bx2)
    picked = None if mode != "free" else logprobs[np.arange(len(index_B)), index_B]
    return index_B == 0, logprobs, picked, list(zip(blocks, turns)), was_cut


def compile_prompt_widths(env: Environment, params, rows: int) -> None:
    """Run once, at every width of `env.config.widths`, each sampler program a rollout of
    `rows` contexts (this process's) calls: the speaker call and the live rows' calls with the
    agent's and the User's sampling knobs. Prompts are a bos each, and the live rows' calls
    have no live row, so they decode nothing. XLA:CPU takes seconds to compile a sampler
    program: a width first needed in the middle of a run would cost a step that much."""
    cfg, ids = env.config, env.token_ids
    parts, live_rows = _speaker_parts(env, rows), _live_call_rows(env, rows)
    row_ids_B = _row_ids(env, rows)
    rng = jax.random.PRNGKey(0)
    for width in cfg.widths:
        def bos_prompts(n):
            tokens = np.full((n, width), env.tokenizer.pad_id, np.int32)
            tokens[:, -1] = env.tokenizer.bos_id
            return tokens, np.arange(width)[None, :].repeat(n, 0) == width - 1
        jax.block_until_ready(sampler.sample_step(
            params, env.model_cfg, *bos_prompts(rows // parts),
            [env.tokenizer.role_id(r) for r in _CHOICE_ROLES], _SPEAKER_CHOICE[cfg.evidence],
            [rng] * 3, (cfg.query_config, cfg.agent), ids, cfg.role_temperature,
            row_ids_B=row_ids_B[:rows // parts], mesh=env.mesh, rules=env.rules,
            row_rules=env.row_rules))
        for config in {cfg.agent, cfg.user_config}:
            jax.block_until_ready(sampler.sample(
                params, env.model_cfg, *bos_prompts(live_rows), rng, config, ids,
                live_B=np.zeros(live_rows, bool),
                row_ids_B=None if live_rows == rows else row_ids_B[:live_rows],
                mesh=env.mesh, rules=env.rules, row_rules=env.row_rules))


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
    search_B, role_logprobs, role_lp_B, first, cut_B = _speak(env, params, rows, rng)
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
        a_blocks, a_turns, a_cut = _sample_blocks(env, params, rows, Role.AGENT,
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
