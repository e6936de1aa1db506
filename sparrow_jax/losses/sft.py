"""Supervised fine-tuning / language-model loss, and per-token helpers over a vocabulary.

The helpers avoid two things XLA:CPU does slowly on [B, L, V] logits with a large
vocabulary: the scatter-add that is the gradient of a gather along V (here a dense
one-hot select that fuses with the softmax gradient), and the variadic (value, index)
reduction of argmax (here a max, then a min over indices offset by the distance to it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(x, mask):
    """Mean of `x` over entries where `mask` is nonzero (0 if there are none)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@jax.custom_vjp
def take_last_axis(x_BxLxV, index_BxL):
    """x[..., index] for one index per row: `take_along_axis` on the last axis. Shape BxL.

    Same values as take_along_axis; its gradient is a dense one-hot select (fused by XLA
    with whatever else writes the [.., V] gradient) instead of a scatter-add.
    """
    return jnp.take_along_axis(x_BxLxV, index_BxL[..., None], axis=-1)[..., 0]


def _take_last_axis_fwd(x_BxLxV, index_BxL):
    # A zero-size array carries V and the dtype into the backward pass.
    like_0xV = jnp.zeros((0, x_BxLxV.shape[-1]), x_BxLxV.dtype)
    return take_last_axis(x_BxLxV, index_BxL), (index_BxL, like_0xV)


def _take_last_axis_bwd(residuals, g_BxL):
    index_BxL, like_0xV = residuals
    vocab_V = jnp.arange(like_0xV.shape[-1], dtype=index_BxL.dtype)
    hit_BxLxV = vocab_V == index_BxL[..., None]
    return jnp.where(hit_BxLxV, g_BxL[..., None], 0).astype(like_0xV.dtype), None


take_last_axis.defvjp(_take_last_axis_fwd, _take_last_axis_bwd)


def next_token_targets(x_BxL):
    """x shifted one left along L, the last column zero: row t holds x[:, t + 1]. Shape BxL.

    Losses read full-length logits with these targets (and a mask shifted the same way,
    so the last column counts for nothing) rather than logits[:, :-1]: slicing [B, L, V]
    logits costs a [B, L, V] pad in the backward pass.
    """
    return jnp.concatenate([x_BxL[:, 1:], jnp.zeros_like(x_BxL[:, :1])], axis=1)


def token_log_probs(logits_BxLxV, targets_BxL):
    """log p(target) under softmax(logits), float32. Shape BxL."""
    x_BxLxV = logits_BxLxV.astype(jnp.float32)
    return take_last_axis(x_BxLxV, targets_BxL) - jax.nn.logsumexp(x_BxLxV, axis=-1)


def first_argmax(logits_BxLxV):
    """jnp.argmax over the last axis (the first index of the maximum), int32. Shape BxL.

    min over v of v + V * sign(max - x_v): sign is 0 exactly at the maxima and 1
    elsewhere, so the smallest value is the first maximum's index (exact in float32 for
    V < 2^23). Written as arithmetic because XLA:CPU vectorises it; a compare-and-select
    inside the reduction, or argmax's (value, index) reduction, runs 3-4x slower.
    For finite logits (a row with an inf or NaN gives an unspecified index).
    """
    vocab = logits_BxLxV.shape[-1]
    if 2 * vocab >= 2 ** 24:
        return jnp.argmax(logits_BxLxV, axis=-1).astype(jnp.int32)
    x_BxLxV = logits_BxLxV.astype(jnp.float32)
    top_BxLx1 = jnp.max(x_BxLxV, axis=-1, keepdims=True)
    rank_BxLxV = jnp.arange(vocab, dtype=jnp.float32) + vocab * jnp.sign(top_BxLx1 - x_BxLxV)
    return jnp.min(rank_BxLxV, axis=-1).astype(jnp.int32)


def sft_loss(logits_BxLxV, targets_BxL, mask_BxL):
    """Mean negative log-likelihood over masked tokens.

    Args:
      logits_BxLxV: logits whose row t predicts `targets_BxL[:, t]` (already shifted).
      targets_BxL: int token ids.
      mask_BxL: 1 where the token is trained on (e.g. agent turns), 0 elsewhere.
    Returns:
      (loss, {'loss', 'accuracy', 'tokens'}): loss in nats per masked token.
    """
    nll_BxL = -token_log_probs(logits_BxLxV, targets_BxL)
    loss = masked_mean(nll_BxL, mask_BxL)
    correct_BxL = first_argmax(logits_BxLxV) == targets_BxL
    metrics = {
        "loss": loss,
        "accuracy": masked_mean(correct_BxL, mask_BxL),
        "tokens": jnp.sum(mask_BxL.astype(jnp.float32)),
    }
    return loss, metrics
