"""Preference reward model loss: Elo scores over K candidate replies."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sparrow_jax.losses.sft import masked_mean


def preference_loss(elo_BxK, chosen_B, valid_BxK=None, weights_B=None, *, aux_logits_BxK=None,
                    aux_targets_BxK=None, aux_mask_BxK=None, aux_weight=0.5,
                    centring_coef=1e-3):
    """Softmax cross-entropy of the chosen candidate under softmax(Elo over K).

    For K=2 this is Bradley-Terry: -log sigmoid(elo_chosen - elo_other).

    Args:
      elo_BxK: scalar score per candidate.
      chosen_B: int index of the preferred candidate.
      valid_BxK: optional bool, False for padding candidates (excluded from the softmax).
      weights_B: optional per-comparison weight (0 = padding comparison).
      aux_logits_BxK: optional logits for the binary "supported and plausible" label;
        aux_targets_BxK its 0/1 targets and aux_mask_BxK where it is labelled.
      aux_weight: with aux labels, loss = (1 - aux_weight) * pref + aux_weight * aux
        (0.5 = the 50/50 average of GopherCite).
      centring_coef: weight of the L2 penalty mean(elo^2) keeping Elo near 0.
    Returns:
      (loss, {'loss', 'pref_loss', 'accuracy', 'elo_mean', 'elo_sq', 'aux_loss'?}).
    """
    elo_BxK = elo_BxK.astype(jnp.float32)
    if valid_BxK is None:
        valid_BxK = jnp.ones(elo_BxK.shape, bool)
    masked_BxK = jnp.where(valid_BxK, elo_BxK, -1e9)
    logp_BxK = jax.nn.log_softmax(masked_BxK, axis=-1)
    pref_nll_B = -jnp.take_along_axis(logp_BxK, chosen_B[:, None].astype(jnp.int32), axis=-1)[:, 0]
    if weights_B is None:
        weights_B = jnp.ones(pref_nll_B.shape, jnp.float32)
    pref_loss = masked_mean(pref_nll_B, weights_B)
    elo_sq = masked_mean(jnp.square(elo_BxK), valid_BxK)
    loss = pref_loss
    metrics = {
        "pref_loss": pref_loss,
        "accuracy": masked_mean(jnp.argmax(masked_BxK, axis=-1) == chosen_B, weights_B),
        "elo_mean": masked_mean(elo_BxK, valid_BxK),
        "elo_sq": elo_sq,
    }
    if aux_logits_BxK is not None:
        if aux_mask_BxK is None:
            aux_mask_BxK = valid_BxK
        aux_mask_BxK = jnp.logical_and(aux_mask_BxK, valid_BxK)
        logits = aux_logits_BxK.astype(jnp.float32)
        targets = aux_targets_BxK.astype(jnp.float32)
        # Numerically stable sigmoid cross-entropy.
        bce_BxK = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        aux_loss = masked_mean(bce_BxK, aux_mask_BxK)
        loss = (1.0 - aux_weight) * pref_loss + aux_weight * aux_loss
        metrics["aux_loss"] = aux_loss
    loss = loss + centring_coef * elo_sq
    metrics["loss"] = loss
    return loss, metrics
