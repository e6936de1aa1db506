"""P(rule broken) for every (dialogue, rule) pair from the rule reward model.

The rule RM reads `dialogue ++ [rule] rule text "\\n" question [eot]` and
answers at the question's eot with ("No", "Yes") logits (index 1 = "Yes" =
broken). Because the rule comes after the dialogue, each dialogue is encoded
once into a KV cache (trunk + rule_rm top) and that cache is shared by all R
rule suffixes (SPARROW.md section 5):

    prefill:   B dialogues            [B, L]      -> cache of L + Q slots
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
           "suffix_start", "YES_INDEX"]

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


def rule_violation_probs(params, model_cfg, dialogue_tokens_BxL, dialogue_valid_BxL,
                         rule_tokens_RxQ, rule_valid_RxQ, dialogue_positions_BxL=None, *,
                         rule_chunk: int | None = None, mesh: Mesh | None = None,
                         rules: Any = None):
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
      mesh, rules: optional device mesh and logical-axis rules; the cache and the
        B * R rows are then sharded by the 'batch' rule. Model activations are
        constrained too when the call is traced inside `sharding.activation_sharding`.
    Jittable (close over model_cfg, mesh and rules).
    """
    if dialogue_positions_BxL is None:
        dialogue_positions_BxL = _default_positions(dialogue_tokens_BxL)
    dialogue_valid_BxL = dialogue_valid_BxL.astype(bool)
    batch, length = dialogue_tokens_BxL.shape
    n_rules, q_len = rule_tokens_RxQ.shape
    cache_axes = hydra.cache_logical_axes(model_cfg, tops=_ROLES)

    cache = hydra.init_cache(model_cfg, batch, length + q_len, tops=_ROLES)
    cache = _constrain(cache, cache_axes, mesh, rules)
    _, cache = hydra.extend(params, model_cfg, dialogue_tokens_BxL, dialogue_positions_BxL,
                            dialogue_valid_BxL, cache, roles=_ROLES)
    start_B = suffix_start(dialogue_positions_BxL, dialogue_valid_BxL)

    def score_chunk(chunk):
        tokens_CxQ, valid_CxQ = chunk
        c = tokens_CxQ.shape[0]
        # Row b * c + j is (dialogue b, rule j of the chunk), matching broadcast_cache.
        rows = {
            "tokens": jnp.tile(tokens_CxQ, (batch, 1)),
            "valid": jnp.tile(valid_CxQ.astype(bool), (batch, 1)),
            "positions": jnp.repeat(start_B, c)[:, None] + jnp.arange(q_len, dtype=jnp.int32),
        }
        rows = _constrain(rows, jax.tree.map(_rows_spec, rows), mesh, rules)
        wide = _constrain(hydra.broadcast_cache(cache, c), cache_axes, mesh, rules)
        out, _ = hydra.extend(params, model_cfg, rows["tokens"], rows["positions"],
                              rows["valid"], wide, roles=_ROLES)
        last_N = jnp.tile(_last_valid_index(valid_CxQ), batch)
        logits_Nx2 = jnp.take_along_axis(out["rule_rm"], last_N[:, None, None], axis=1)[:, 0]
        return _p_broken(logits_Nx2).reshape(batch, c)

    if rule_chunk is None or rule_chunk >= n_rules:
        return score_chunk((rule_tokens_RxQ, rule_valid_RxQ))
    n_chunks = -(-n_rules // rule_chunk)
    pad = n_chunks * rule_chunk - n_rules  # padded rules are all-invalid rows, dropped below
    tokens = jnp.pad(rule_tokens_RxQ, ((0, pad), (0, 0)))
    valid = jnp.pad(rule_valid_RxQ.astype(bool), ((0, pad), (0, 0)))
    chunks = (tokens.reshape(n_chunks, rule_chunk, q_len),
              valid.reshape(n_chunks, rule_chunk, q_len))
    p_KxBxC = jax.lax.map(score_chunk, chunks)
    return jnp.moveaxis(p_KxBxC, 0, 1).reshape(batch, n_chunks * rule_chunk)[:, :n_rules]


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
