"""P(rule broken) for every (dialogue, rule) pair from the rule reward model.

The rule RM reads `dialogue ++ [rule] rule text "\\n" question [eot]` and
answers at the question's eot with ("No", "Yes") logits (index 1 = "Yes" =
broken). Because the rule comes after the dialogue, each dialogue is encoded
once into a KV cache (trunk + rule_rm top) and that cache is shared by all R
rule suffixes (docs/recipe.md section 5):

    prefill:   B dialogues            [B, L]      -> cache of L slots
    broadcast: every row R times      [B * R]     (row b * R + r = dialogue b, rule r)
    extend:    each row's rule suffix [B * R, Q]  positions continue from the dialogue's length

`rule_violation_probs_unshared` scores every pair from scratch with one
forward over the concatenation: the reference the shared path must equal.

Shapes: B dialogues, L dialogue slots (right-padded; `valid` marks real
tokens), R rules, Q rule-suffix slots (right-padded).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from sparrow_jax import sharding as shd
from sparrow_jax.dialogue import render as render_lib
from sparrow_jax.dialogue.rules import Rule
from sparrow_jax.dialogue.tokenizer import Tokenizer
from sparrow_jax.model import hydra

__all__ = ["rule_violation_probs", "rule_violation_probs_unshared", "prepare_rule_suffixes",
           "group_rules_by_length", "suffix_start", "YES_INDEX"]

YES_INDEX = 1  # rule_rm yes_no logits: 0 = "No" (kept), 1 = "Yes" (broken)
_ROLES = ("rule_rm",)


def prepare_rule_suffixes(rules: Sequence[Rule | str], tokenizer: Tokenizer,
                          question: str | None = None, length: int | None = None,
                          multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Render every rule's question suffix `[rule] text "\\n" question [eot]`, right-padded.

    Args:
      rules: `Rule`s (their `.text` is used) or rule texts, in rule-index order.
      question: the question after the rule (default `render.DEFAULT_RULE_QUESTION`).
      length: Q; default the longest suffix rounded up to a multiple of `multiple`
        (as the rule_rm data pipeline does). A suffix longer than Q is a ValueError.
    Returns:
      (rule_tokens_RxQ int32 padded with pad_id, rule_valid_RxQ bool).
    """
    if not rules:
        raise ValueError("no rules to render")
    question = render_lib.DEFAULT_RULE_QUESTION if question is None else question
    texts = [r.text if isinstance(r, Rule) else str(r) for r in rules]
    suffixes = [render_lib.render_rule_question(t, tokenizer, question) for t in texts]
    longest = max(len(s) for s in suffixes)
    if length is None:
        length = -(-longest // multiple) * multiple
    if longest > length:
        raise ValueError(f"a rule suffix has {longest} tokens, more than length={length}")
    tokens_RxQ = np.full((len(suffixes), length), tokenizer.pad_id, np.int32)
    valid_RxQ = np.zeros((len(suffixes), length), bool)
    for r, suffix in enumerate(suffixes):
        tokens_RxQ[r, :len(suffix)] = suffix
        valid_RxQ[r, :len(suffix)] = True
    return tokens_RxQ, valid_RxQ


def _default_positions(tokens_BxL):
    batch, length = tokens_BxL.shape
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def suffix_start(positions_BxL, valid_BxL):
    """int32 [B]: the position right after each dialogue's last real token (0 if empty)."""
    return jnp.max(jnp.where(valid_BxL, positions_BxL, -1), axis=1).astype(jnp.int32) + 1


def _last_valid_index(valid_RxQ):
    """int32 [R]: the last True slot of each suffix (0 for an all-False row)."""
    q = valid_RxQ.shape[1]
    return jnp.maximum(jnp.max(jnp.where(valid_RxQ, jnp.arange(q), -1), axis=1), 0)


def _p_broken(yes_no_logits_Nx2):
    return jax.nn.softmax(yes_no_logits_Nx2.astype(jnp.float32), axis=-1)[:, YES_INDEX]


def _constrain(tree, logical_tree, mesh: Mesh | None, rules):
    """Shard `tree` by its logical axes on `mesh` (dims the mesh does not divide replicate)."""
    if mesh is None:
        return tree
    shardings, _ = shd.resolve_shardings(logical_tree, tree, mesh, rules)
    return jax.lax.with_sharding_constraint(tree, shardings)


def _rows_spec(x):
    return P(*(("batch",) + (None,) * (x.ndim - 1)))


def group_rules_by_length(rule_valid_RxQ, max_groups: int = 3,
                          multiple: int = 8) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Static rule groups for `rule_violation_probs(rule_groups=...)`: ((rule indices, Q_g), ...).

    Rules sorted by real suffix length are cut into at most `max_groups` runs so that the
    padded slots, sum over groups of |g| * Q_g (Q_g = the group's longest suffix rounded up
    to `multiple`, at most Q), are fewest. The 23 packaged rules with the toy tokenizer:
    1840 slots at one Q of 80 -> 1232 in three groups (Q_g = 48, 56, 72).
    """
    valid = np.asarray(rule_valid_RxQ, bool)
    n_rules, q_len = valid.shape
    lengths = valid.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    sorted_len = lengths[order]

    def width(i, j):  # slots of one group holding sorted rules i..j-1
        return (j - i) * min(q_len, max(multiple, -(-int(sorted_len[j - 1]) // multiple) * multiple))

    groups_max = max(1, min(max_groups, n_rules))
    # cost[g][j]: fewest slots for the first j sorted rules in g groups; cut[g][j]: where the last begins.
    inf = float("inf")
    cost = [[inf] * (n_rules + 1) for _ in range(groups_max + 1)]
    cut = [[0] * (n_rules + 1) for _ in range(groups_max + 1)]
    cost[0][0] = 0
    for g in range(1, groups_max + 1):
        for j in range(1, n_rules + 1):
            for i in range(g - 1, j):
                c = cost[g - 1][i] + width(i, j)
                if c < cost[g][j]:
                    cost[g][j], cut[g][j] = c, i
    best = min(range(1, groups_max + 1), key=lambda g: cost[g][n_rules])
    bounds, j = [], n_rules
    for g in range(best, 0, -1):
        bounds.append((cut[g][j], j))
        j = cut[g][j]
    return tuple((tuple(int(r) for r in order[i:j]), width(i, j) // (j - i))
                 for i, j in reversed(bounds))


def rule_violation_probs(params, model_cfg, dialogue_tokens_BxL, dialogue_valid_BxL,
                         rule_tokens_RxQ, rule_valid_RxQ, dialogue_positions_BxL=None, *,
                         rule_chunk: int | None = None, rule_groups=None,
                         mesh: Mesh | None = None, rules: Any = None, return_trunk: bool = False):
    """p_broken_BxR float32 in [0, 1], each dialogue encoded once and shared by all rules.

    Args:
      params: hydra params holding `trunk` and `rule_rm`.
      dialogue_tokens_BxL / dialogue_valid_BxL: rendered dialogues (padding = False).
      rule_tokens_RxQ / rule_valid_RxQ: rule suffixes (`prepare_rule_suffixes`); each
        row's real tokens come first (the answer is read at its last real token).
      dialogue_positions_BxL: default arange(L); suffix positions continue from each
        dialogue's last real position + 1, whatever the padding.
      rule_chunk: score this many rules per step (lax.map over chunks) to bound the
        broadcast cache at B * rule_chunk rows; None = all R at once.
      rule_groups: static ((rule indices, Q_g), ...) covering every rule once
        (`group_rules_by_length`): each group runs at its own suffix width Q_g, so short
        rules do not pay for the longest one's padding. Q_g must hold the group's real
        tokens. None = one group of all R at Q.
      mesh, rules: optional device mesh and logical-axis rules; the cache and the
        B * R rows are then sharded by the 'batch' rule. Model activations are
        constrained too when the call is traced inside `sharding.activation_sharding`.
      return_trunk: return (p_broken_BxR, trunk_BxLxD): the trunk's output over the
        dialogues, which the RL update takes instead of running the trunk again
        (`hydra.forward(trunk_BxLxD=...)`).
    Jittable (close over model_cfg, rule_groups, mesh and rules).
    """
    slots_as_positions = dialogue_positions_BxL is None
    if slots_as_positions:
        dialogue_positions_BxL = _default_positions(dialogue_tokens_BxL)
    dialogue_valid_BxL = dialogue_valid_BxL.astype(bool)
    batch, length = dialogue_tokens_BxL.shape
    n_rules, q_len = rule_tokens_RxQ.shape
    groups = tuple(rule_groups) if rule_groups else ((tuple(range(n_rules)), q_len),)
    covered = sorted(r for indices, _ in groups for r in indices)
    if covered != list(range(n_rules)) or any(not 0 < q <= q_len for _, q in groups):
        raise ValueError(f"rule_groups must cover rules 0..{n_rules - 1} once each at widths in "
                         f"(0, {q_len}]; got {groups}")
    cache_axes = hydra.cache_logical_axes(model_cfg, tops=_ROLES)
    params = hydra.per_layer_params(params, model_cfg)  # sliced once, not per rule chunk

    # The suffixes read the dialogue's cache and never write to it (`keep_cache=False`).
    cache = hydra.init_cache(model_cfg, batch, length, tops=_ROLES)
    cache = _constrain(cache, cache_axes, mesh, rules)
    # Only the cache (and the trunk, if asked) is wanted here: the rule RM's last layer
    # computes one token's output.
    prefill, cache = hydra.extend(params, model_cfg, dialogue_tokens_BxL, dialogue_positions_BxL,
                                  dialogue_valid_BxL, cache, roles=_ROLES, empty_cache=True,
                                  consecutive_positions=slots_as_positions,
                                  read_BxK=jnp.zeros((batch, 1), jnp.int32),
                                  return_trunk=return_trunk)
    start_B = suffix_start(dialogue_positions_BxL, dialogue_valid_BxL)

    def score_chunk(chunk):
        tokens_CxQ, valid_CxQ = chunk
        c, q = tokens_CxQ.shape
        # Row b * c + j is (dialogue b, rule j of the chunk), matching broadcast_cache.
        rows = {
            "tokens": jnp.tile(tokens_CxQ, (batch, 1)),
            "valid": jnp.tile(valid_CxQ.astype(bool), (batch, 1)),
            "positions": jnp.repeat(start_B, c)[:, None] + jnp.arange(q, dtype=jnp.int32),
        }
        rows = _constrain(rows, jax.tree.map(_rows_spec, rows), mesh, rules)
        wide = _constrain(hydra.broadcast_cache(cache, c), cache_axes, mesh, rules)
        # The answer is read at each suffix's last real token: only that token's output.
        last_Nx1 = jnp.tile(_last_valid_index(valid_CxQ), batch)[:, None]
        out, _ = hydra.extend(params, model_cfg, rows["tokens"], rows["positions"],
                              rows["valid"], wide, roles=_ROLES, read_BxK=last_Nx1,
                              keep_cache=False)
        return _p_broken(out["rule_rm"][:, 0]).reshape(batch, c)

    def score_group(tokens_GxQ, valid_GxQ):
        n = tokens_GxQ.shape[0]
        if rule_chunk is None or rule_chunk >= n:
            return score_chunk((tokens_GxQ, valid_GxQ))
        n_chunks = -(-n // rule_chunk)
        pad = n_chunks * rule_chunk - n  # padded rules are all-invalid rows, dropped below
        q = tokens_GxQ.shape[1]
        tokens = jnp.pad(tokens_GxQ, ((0, pad), (0, 0)))
        valid = jnp.pad(valid_GxQ.astype(bool), ((0, pad), (0, 0)))
        chunks = (tokens.reshape(n_chunks, rule_chunk, q), valid.reshape(n_chunks, rule_chunk, q))
        p_KxBxC = jax.lax.map(score_chunk, chunks)
        return jnp.moveaxis(p_KxBxC, 0, 1).reshape(batch, n_chunks * rule_chunk)[:, :n]

    pieces = []
    for indices, q in groups:
        index = np.asarray(indices, np.int32)
        pieces.append(score_group(rule_tokens_RxQ[index, :q], rule_valid_RxQ[index, :q]))
    rule_order = np.argsort(np.concatenate([np.asarray(i) for i, _ in groups]))
    p_broken_BxR = jnp.concatenate(pieces, axis=1)[:, rule_order]
    return (p_broken_BxR, prefill["trunk"]) if return_trunk else p_broken_BxR


def rule_violation_probs_unshared(params, model_cfg, dialogue_tokens_BxL, dialogue_valid_BxL,
                                  rule_tokens_RxQ, rule_valid_RxQ, dialogue_positions_BxL=None):
    """The reference: every (dialogue, rule) pair as its own row of one full forward.

    Same arguments and result (p_broken_BxR) as `rule_violation_probs`; costs
    B * R forwards over L + Q tokens instead of B over L plus B * R over Q.
    """
    if dialogue_positions_BxL is None:
        dialogue_positions_BxL = _default_positions(dialogue_tokens_BxL)
    dialogue_valid_BxL = dialogue_valid_BxL.astype(bool)
    batch, length = dialogue_tokens_BxL.shape
    n_rules, q_len = rule_tokens_RxQ.shape
    start_N = jnp.repeat(suffix_start(dialogue_positions_BxL, dialogue_valid_BxL), n_rules)
    tokens = jnp.concatenate([jnp.repeat(dialogue_tokens_BxL, n_rules, axis=0),
                              jnp.tile(rule_tokens_RxQ, (batch, 1))], axis=1)
    valid = jnp.concatenate([jnp.repeat(dialogue_valid_BxL, n_rules, axis=0),
                             jnp.tile(rule_valid_RxQ.astype(bool), (batch, 1))], axis=1)
    positions = jnp.concatenate([jnp.repeat(dialogue_positions_BxL, n_rules, axis=0),
                                 start_N[:, None] + jnp.arange(q_len, dtype=jnp.int32)], axis=1)
    logits = hydra.forward(params, model_cfg, tokens, positions.astype(jnp.int32), valid,
                           roles=_ROLES)["rule_rm"]
    read_N = length + jnp.tile(_last_valid_index(rule_valid_RxQ), batch)
    logits_Nx2 = jnp.take_along_axis(logits, read_N[:, None, None], axis=1)[:, 0]
    return _p_broken(logits_Nx2).reshape(batch, n_rules)
