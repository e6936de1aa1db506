"""RL loss: GopherCite's A2C with a KL anchor to the frozen teacher.

  loss = alpha * KL(teacher || policy)                       (kl_mode="loss")
       + (1 - alpha) * (policy_gradient + value_coef * value_loss)
       - entropy_coef * entropy

With kl_mode="reward" the KL instead enters the reward, r_t -= kl_coef * (log pi(a_t)
- log teacher(a_t)), and there is no KL term (alpha is unused). Returns are undiscounted:
return_t = sum_{s >= t} r_s.

Two masks (docs/recipe.md section 6): the POLICY mask marks every token of the policy's
new turns (agent and search-query; user and search-result tokens carry no gradient);
the SAMPLED mask marks the subset the policy actually drew (`rl.sequence`). A token the
environment forced (the role token in the `always` / `never` / `choose` evidence modes,
the eot closing an over-length turn) is not an action of the policy, so:
  - the policy gradient, and kl_mode="reward"'s per-token KL estimate (log pi(a) - log
    teacher(a) estimates the KL only for a ~ pi), use the sampled mask;
  - the KL, entropy and value terms, which depend on the state and not on the token
    taken, average over the policy mask: the policy's distribution at a forced token
    still shapes its behaviour (the `choose` mode's speaker is its argmax), and the
    return from there is a valid target for the value.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sparrow_jax.losses.sft import take_last_axis


def kl_teacher_policy(policy_logits_BxTxV, teacher_logits_BxTxV):
    """Full-distribution KL(teacher || policy) per position, float32. Shape BxT."""
    logp_BxTxV = jax.nn.log_softmax(policy_logits_BxTxV.astype(jnp.float32), axis=-1)
    logq_BxTxV = jax.nn.log_softmax(teacher_logits_BxTxV.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.exp(logq_BxTxV) * (logq_BxTxV - logp_BxTxV), axis=-1)


def undiscounted_returns(rewards_BxT):
    """return_t = sum_{s >= t} rewards_s (reverse cumulative sum along T)."""
    return jnp.flip(jnp.cumsum(jnp.flip(rewards_BxT, axis=-1), axis=-1), axis=-1)


def explained_variance_from_means(return_mean, return_sq_mean, residual_mean, residual_sq_mean):
    """1 - Var(return - value) / Var(return) from masked means of the return, its square, the
    residual (return - value) and its square: 1 = perfect, 0 = a constant guess, negative =
    worse; 0 when the returns have no variance. From means, so that a batch scored in parts
    (whose means over the whole batch add up: `combine_part_metrics`) gets the whole batch's."""
    var_returns = return_sq_mean - jnp.square(return_mean)
    var_residual = residual_sq_mean - jnp.square(residual_mean)
    return jnp.where(var_returns > 1e-8, 1.0 - var_residual / jnp.maximum(var_returns, 1e-8), 0.0)


def combine_part_metrics(summed: dict) -> dict:
    """A batch's A2C metrics from the sums over its parts of each part's (`a2c_loss` with the
    whole batch's `token_counts`: every metric a share of the whole batch's mean, but the
    explained variance, recomputed here from the summed means)."""
    return {**summed, "explained_variance": explained_variance_from_means(
        summed["return"], summed["return_sq"], summed["advantage"], summed["advantage_sq"])}


def a2c_loss(policy_logits_BxTxV, teacher_logits_BxTxV, values_BxT, actions_BxT, rewards_BxT,
             policy_mask_BxT, sampled_mask_BxT, *, alpha=0.1, value_coef=1.0, entropy_coef=0.0,
             kl_mode="loss", kl_coef=0.1, token_counts=None):
    """GopherCite A2C loss; the policy gradient credits only sampled tokens (module docstring).

    Args:
      policy_logits_BxTxV: policy logits; row t gives the distribution of `actions_BxT[:, t]`.
      teacher_logits_BxTxV: frozen teacher logits, same alignment (no gradient flows).
      values_BxT: value head prediction of the return from position t (before action t).
      actions_BxT: int tokens taken (sampled or forced).
      rewards_BxT: reward received at token t (usually nonzero only at a turn's last
        token); returns are their undiscounted reverse cumulative sum.
      policy_mask_BxT: 1 on the tokens of new agent / search-query turns, 0 elsewhere.
      sampled_mask_BxT: 1 where the policy drew the token itself (a subset of the policy
        mask, which this function does not check: the product with it is used).
      alpha: KL-loss weight (kl_mode="loss"); 0.1 in GopherCite.
      value_coef: weight of 0.5 * (value - return)^2.
      entropy_coef: weight of the entropy bonus (subtracted).
      kl_mode: "loss" (KL term in the loss) or "reward" (KL penalty in the reward).
      kl_coef: per-token reward penalty weight for kl_mode="reward".
      token_counts: (policy tokens, sampled tokens) that the means divide by, when this batch
        is a part of a larger one (`combine_part_metrics`); default this batch's own counts.
    Returns:
      (loss, metrics) with 'loss', 'pg_loss' (mean over sampled tokens), 'value_loss', 'kl',
      'entropy', 'return', 'advantage', 'return_sq', 'advantage_sq', 'explained_variance'
      (means over policy tokens), 'sampled_fraction' (sampled / policy tokens).
    """
    if kl_mode not in ("loss", "reward"):
        raise ValueError(f"kl_mode={kl_mode!r} is not 'loss' or 'reward'")
    mask = policy_mask_BxT.astype(jnp.float32)
    sampled = sampled_mask_BxT.astype(jnp.float32) * mask
    if token_counts is None:
        token_counts = (jnp.sum(mask), jnp.sum(sampled))
    policy_tokens, sampled_tokens = (jnp.maximum(n, 1.0) for n in token_counts)
    policy_mean = lambda x_BxT: jnp.sum(x_BxT * mask) / policy_tokens  # noqa: E731
    teacher_logits_BxTxV = jax.lax.stop_gradient(teacher_logits_BxTxV)
    logp_BxTxV = jax.nn.log_softmax(policy_logits_BxTxV.astype(jnp.float32), axis=-1)
    logp_action_BxT = take_last_axis(logp_BxTxV, actions_BxT)
    entropy_BxT = -jnp.sum(jnp.exp(logp_BxTxV) * logp_BxTxV, axis=-1)
    kl_BxT = kl_teacher_policy(policy_logits_BxTxV, teacher_logits_BxTxV)

    rewards_BxT = rewards_BxT.astype(jnp.float32)
    if kl_mode == "reward":
        logq_action_BxT = take_last_axis(
            jax.nn.log_softmax(teacher_logits_BxTxV.astype(jnp.float32), axis=-1), actions_BxT)
        sample_kl_BxT = jax.lax.stop_gradient(logp_action_BxT - logq_action_BxT)
        rewards_BxT = rewards_BxT - kl_coef * sample_kl_BxT * sampled
    returns_BxT = undiscounted_returns(rewards_BxT)
    values_BxT = values_BxT.astype(jnp.float32)
    advantage_BxT = returns_BxT - jax.lax.stop_gradient(values_BxT)

    pg_loss = -jnp.sum(advantage_BxT * logp_action_BxT * sampled) / sampled_tokens
    value_loss = 0.5 * policy_mean(jnp.square(values_BxT - returns_BxT))
    entropy = policy_mean(entropy_BxT)
    # The entropy is always reported, but enters the loss only when weighted: a constant
    # 0 * entropy would still cost a backward pass over the B x T x V log-probs.
    unweighted = isinstance(entropy_coef, (int, float)) and entropy_coef == 0
    entropy_bonus = 0.0 if unweighted else entropy_coef * entropy
    kl = policy_mean(kl_BxT)
    a2c = pg_loss + value_coef * value_loss
    if kl_mode == "loss":
        loss = alpha * kl + (1.0 - alpha) * a2c - entropy_bonus
    else:
        loss = a2c - entropy_bonus
    moments = {"return": policy_mean(returns_BxT), "return_sq": policy_mean(jnp.square(returns_BxT)),
               "advantage": policy_mean(advantage_BxT),
               "advantage_sq": policy_mean(jnp.square(advantage_BxT))}
    metrics = {
        "loss": loss,
        "pg_loss": pg_loss,
        "value_loss": value_loss,
        "kl": kl,
        "entropy": entropy,
        **moments,
        "explained_variance": explained_variance_from_means(
            moments["return"], moments["return_sq"], moments["advantage"], moments["advantage_sq"]),
        "sampled_fraction": jnp.sum(sampled) / policy_tokens,
    }
    return loss, metrics
