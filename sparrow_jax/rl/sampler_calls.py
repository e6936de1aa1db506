"""The rollout's sampler calls: prompts cut, assembled and left-padded (`_padded_prompts`), each call
at the narrowest prompt width that holds its rows (`_narrowest`), the speaker call (`speak`), calls
that sample some rows only (`sample_live`), all as part-batch calls side by side when
`Environment.parallel_calls` > 1 (`rl.parallel`), and `compile_prompt_widths`, which makes
every one of these programs before a run. `rl.rollout` says what each call is for.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

import jax
import numpy as np

from sparrow_jax import distributed
from sparrow_jax.dialogue.turns import Role
from sparrow_jax.rl import lengths, parallel, phases
from sparrow_jax.rl import sequence as seq_lib
from sparrow_jax.rl.sequence import Block
from sparrow_jax.sampling import sampler
from sparrow_jax.sampling.sampler import SamplingConfig
from sparrow_jax.sampling.turns import SampledTurn, sampled_turns

if TYPE_CHECKING:
    from sparrow_jax.rl.rollout import Environment

_CHOICE_ROLES = (Role.SEARCH_QUERY, Role.AGENT)  # index 0 = search, 1 = answer directly
# The sampler's speaker choice (`sampler.sample_step`) per evidence mode.
_SPEAKER_CHOICE = {"always": "first", "never": "second", "choose": "choose", "free": "free"}


def _padded_prompts(env: Environment, rows: Sequence[list[Block]], open_role: Role | None,
                   reserve: int = 1) -> tuple[list[list[Block]], list[bool], np.ndarray, np.ndarray]:
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
    """Part-batch calls of the speaker call of `rows` rows (`speak`)."""
    return env.parallel_calls if rows % env.parallel_calls == 0 else 1


def _live_call_rows(env: Environment, rows: int) -> int:
    """Rows of each live-rows call of a batch of `rows` (`sample_live`): B/(2P), or B."""
    parts = env.parallel_calls
    return rows // (2 * parts) if rows % (2 * parts) == 0 else rows


def _row_ids(env: Environment, rows: int) -> np.ndarray:
    return sampler.global_row_ids(rows, env.mesh, env.row_rules or env.rules)


def sample_live(env: Environment, params, tokens_BxP, valid_BxP, rng, config: SamplingConfig,
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


def sample_blocks(env: Environment, params, rows: Sequence[list[Block]], role: Role, rng,
                  config: SamplingConfig, live_B=None
                  ) -> tuple[list[Block], list[SampledTurn], list[bool]]:
    """Sample one `role` turn per row (only the `live_B` rows, if given: the others' turns are
    empty and meaningless): (new blocks, SampledTurns, was_cut per row)."""
    _, was_cut, tokens, valid = _padded_prompts(env, rows, role)
    with phases.phase("sample"):
        out = jax.device_get(sample_live(env, params, tokens, valid, rng, config, live_B))
    blocks, turns = _turn_blocks(env, [role] * len(rows), out)
    return blocks, turns, was_cut


def speak(env: Environment, params, rows, rng):
    """Step 1 of `rl.rollout`'s docstring: (search_B bool, role_logprobs_Bx2 or None, sampled role
    log-prob_B or None, the first turn's (Block, SampledTurn) per row, was_cut_B)."""
    mode = env.config.evidence
    _, was_cut, tokens, valid = _padded_prompts(env, rows, None, reserve=1)
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
