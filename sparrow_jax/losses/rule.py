"""Rule reward model loss: was the rule broken? ("No" = kept, "Yes" = broken)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sparrow_jax.losses.sft import masked_mean


def rule_loss(yes_no_logits_Bx2, broken_B, weights_B=None):
    """Binary cross-entropy from the rule RM's ("No", "Yes") logits.

    Args:
      yes_no_logits_Bx2: logits at the answer position; index 0 = "No" (rule kept),
        1 = "Yes" (rule broken).
      broken_B: bool/0-1 label, 1 = the rule was broken.
      weights_B: optional per-example weight (0 = padding example).
    Returns:
      (loss, {'loss', 'accuracy', 'p_broken'}): loss in nats per example.
    """
    logp_Bx2 = jax.nn.log_softmax(yes_no_logits_Bx2.astype(jnp.float32), axis=-1)
    target_B = broken_B.astype(jnp.int32)
    nll_B = -jnp.take_along_axis(logp_Bx2, target_B[:, None], axis=-1)[:, 0]
    if weights_B is None:
        weights_B = jnp.ones_like(nll_B)
    loss = masked_mean(nll_B, weights_B)
    p_broken_B = jnp.exp(logp_Bx2[:, 1])
    metrics = {
        "loss": loss,
        "accuracy": masked_mean((p_broken_B > 0.5) == (target_B == 1), weights_B),
        "p_broken": masked_mean(p_broken_B, weights_B),
    }
    return loss, metrics
