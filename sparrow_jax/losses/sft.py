"""Supervised fine-tuning / language-model loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(x, mask):
    """Mean of `x` over entries where `mask` is nonzero (0 if there are none)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def token_log_probs(logits_BxLxV, targets_BxL):
    """log p(target) under softmax(logits), float32. Shape BxL."""
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]


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
    correct_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
    metrics = {
        "loss": loss,
        "accuracy": masked_mean(correct_BxL, mask_BxL),
        "tokens": jnp.sum(mask_BxL.astype(jnp.float32)),
    }
    return loss, metrics
