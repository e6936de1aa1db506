"""The A2C loss credits only what the policy sampled (docs/recipe.md section 6), against NumPy;
and `rl.value_grad_to_policy` stops or lets the value loss into the policy top."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_models import tiny_model_config
from sparrow_jax.config import rl_defaults
from sparrow_jax.losses.a2c import a2c_loss
from sparrow_jax.model import hydra
from sparrow_jax.train import stages

ROLES = ("policy", "value", "teacher")


def np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def a2c_numpy(p_logits, q_logits, values, actions, rewards, policy_mask, sampled_mask, *,
              alpha=0.1, value_coef=1.0, entropy_coef=0.0, kl_mode="loss", kl_coef=0.1):
    """(loss, metrics) of the A2C loss written out in float64 NumPy, one token at a time."""
    p_logits, q_logits, values, rewards = (np.asarray(x, np.float64)
                                           for x in (p_logits, q_logits, values, rewards))
    logp, logq = np_log_softmax(p_logits), np_log_softmax(q_logits)
    batch, length = actions.shape
    pol = policy_mask.astype(bool)
    smp = sampled_mask.astype(bool) & pol
    logp_a = np.array([[logp[b, t, actions[b, t]] for t in range(length)] for b in range(batch)])
    logq_a = np.array([[logq[b, t, actions[b, t]] for t in range(length)] for b in range(batch)])
    rewards = rewards.copy()
    if kl_mode == "reward":
        rewards[smp] -= kl_coef * (logp_a - logq_a)[smp]
    returns = np.array([[rewards[b, t:].sum() for t in range(length)] for b in range(batch)])
    adv = returns - values
    pg = -np.mean((adv * logp_a)[smp])
    value_loss = 0.5 * np.mean(((values - returns) ** 2)[pol])
    kl = np.mean((np.exp(logq) * (logq - logp)).sum(-1)[pol])
    entropy = np.mean(-(np.exp(logp) * logp).sum(-1)[pol])
    a2c = pg + value_coef * value_loss
    loss = (alpha * kl + (1 - alpha) * a2c if kl_mode == "loss" else a2c) - entropy_coef * entropy
    resid = (returns - values)[pol]
    ev = 1 - resid.var() / returns[pol].var()
    return loss, {"loss": loss, "pg_loss": pg, "value_loss": value_loss, "kl": kl,
                  "entropy": entropy, "return": returns[pol].mean(), "advantage": adv[pol].mean(),
                  "return_sq": (returns[pol] ** 2).mean(), "advantage_sq": (adv[pol] ** 2).mean(),
                  "explained_variance": ev, "sampled_fraction": smp.sum() / pol.sum()}


def _forced_batch(seed=0, batch=3, length=9, vocab=11):
    """Random logits and two turns per row whose role token (and one eot) were forced."""
    rs = np.random.RandomState(seed)
    p = rs.randn(batch, length, vocab).astype(np.float32)
    q = rs.randn(batch, length, vocab).astype(np.float32)
    values = rs.randn(batch, length).astype(np.float32)
    actions = rs.randint(0, vocab, (batch, length))
    rewards = np.zeros((batch, length), np.float32)
    rewards[:, -2] = rs.randn(batch)
    rewards[:, 4] = rs.randn(batch)
    policy = np.zeros((batch, length), bool)
    policy[:, 1:5] = True   # a search query: role, text, text, eot
    policy[:, 6:9] = True   # a Sparrow turn: role, text, eot
    sampled = policy.copy()
    sampled[:, [1, 6]] = False   # both role tokens forced (e.g. the `choose` mode)
    sampled[0, 8] = False        # row 0's Sparrow turn was cut: its eot was appended
    sampled[1, 1] = True         # row 1's speaker was sampled (the `free` mode)
    return p, q, values, actions, rewards, policy.astype(np.float32), sampled.astype(np.float32)


@pytest.mark.parametrize("kwargs", [
    dict(alpha=0.1, value_coef=0.5, entropy_coef=0.01),
    dict(alpha=0.3, value_coef=1.0, entropy_coef=0.0),
    dict(kl_mode="reward", kl_coef=0.2, value_coef=1.0, entropy_coef=0.02),
])
def test_a2c_loss_and_metrics_match_numpy_with_forced_tokens(kwargs):
    arrays = _forced_batch()
    loss, metrics = a2c_loss(*map(jnp.asarray, arrays), **kwargs)
    ref_loss, ref_metrics = a2c_numpy(*arrays, **kwargs)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-6)
    assert set(metrics) == set(ref_metrics)
    for key, value in ref_metrics.items():
        np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)
    # The batch exercises the masks: crediting every policy token gives another loss.
    *rest, policy, _ = arrays
    assert abs(a2c_numpy(*rest, policy, policy, **kwargs)[0] - ref_loss) > 1e-3


def test_forced_tokens_get_no_policy_gradient():
    """With only the policy-gradient term in the loss, the logits of forced positions get
    exactly zero gradient (their token and advantage do not matter), sampled ones do not."""
    p, q, values, actions, rewards, policy, sampled = _forced_batch(seed=1)
    pg_only = dict(alpha=0.0, value_coef=0.0, entropy_coef=0.0)

    def loss_of(p, actions):
        return a2c_loss(p, *map(jnp.asarray, (q, values, actions, rewards, policy, sampled)),
                        **pg_only)[0]
    grad = np.asarray(jax.grad(loss_of)(jnp.asarray(p), jnp.asarray(actions)))
    forced = (policy == 1) & (sampled == 0)
    assert forced.sum() == 6
    assert np.all(grad[forced] == 0) and np.all(grad[policy == 0] == 0)
    assert np.all(np.abs(grad[sampled == 1]).sum(-1) > 0)
    other = np.where(forced, (actions + 1) % p.shape[-1], actions)
    np.testing.assert_allclose(float(loss_of(jnp.asarray(p), jnp.asarray(other))),
                               float(loss_of(jnp.asarray(p), jnp.asarray(actions))), rtol=1e-6)


def _stage(value_grad_to_policy=True, **kwargs):
    cfg = tiny_model_config()
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), ROLES)
    batch = jax.tree.map(jnp.asarray, stages.example_batch("rl", 4, 12, cfg.vocab_size, seed=5))
    loss_fn = stages.loss_fn_for_stage("rl", cfg, elo_weight=0.0,
                                       value_grad_to_policy=value_grad_to_policy, **kwargs)
    return cfg, params, batch, loss_fn


def test_rl_stage_loss_matches_numpy_on_its_forward_outputs():
    """The stage shifts tokens, rewards and both masks one left and credits sampled tokens."""
    cfg, params, batch, loss_fn = _stage(entropy_coef=0.01)
    sampled = np.asarray(batch["sampled_mask_BxL"])
    assert 0 < sampled.sum() < np.asarray(batch["policy_mask_BxL"]).sum()  # forced tokens exist
    loss, metrics = loss_fn(params, batch, jax.random.PRNGKey(0))
    out = hydra.forward(params, cfg, batch["tokens_BxL"], valid_BxL=batch["valid_BxL"], roles=ROLES)
    shift = lambda x: np.asarray(x)[:, 1:]  # noqa: E731
    last = lambda x: np.asarray(x)[:, :-1]  # noqa: E731
    ref_loss, ref_metrics = a2c_numpy(
        last(out["policy"]), last(out["teacher"]), last(out["value"]), shift(batch["tokens_BxL"]),
        shift(batch["rewards_BxL"]), shift(batch["policy_mask_BxL"]), shift(sampled),
        entropy_coef=0.01)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    for key, value in ref_metrics.items():
        np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-4, atol=1e-6, err_msg=key)


def _grads(params, batch, loss_fn):
    return jax.grad(lambda p: loss_fn(p, batch, jax.random.PRNGKey(0))[0])(params)


def _max_abs_diff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs)


def test_value_grad_to_policy_decides_whether_the_value_loss_reaches_the_policy_top():
    assert rl_defaults().value_grad_to_policy is True
    _, params, batch, shared = _stage(True)
    _, _, _, stopped = _stage(False)
    _, _, _, no_value = _stage(True, value_coef=0.0)
    np.testing.assert_allclose(float(shared(params, batch, None)[0]),
                               float(stopped(params, batch, None)[0]), rtol=1e-6)
    g_shared, g_stopped, g_none = (_grads(params, batch, f) for f in (shared, stopped, no_value))
    # Off: the policy top's gradient is the one without any value loss ...
    assert _max_abs_diff(g_stopped["policy"], g_none["policy"]) < 1e-7
    # ... on: the value loss adds to it. The value head's own gradient is the same.
    assert _max_abs_diff(g_shared["policy"], g_none["policy"]) > 1e-5
    assert _max_abs_diff(g_shared["value"], g_stopped["value"]) < 1e-7
    assert _max_abs_diff(g_stopped["value"], jax.tree.map(jnp.zeros_like, g_stopped["value"])) > 0


def test_value_grad_to_policy_reaches_the_stage_from_the_config():
    from tiny_models import tiny_config
    cfg = tiny_config()
    assert stages.loss_kwargs_from_config(cfg, "rl")["value_grad_to_policy"] is True
    cfg.rl.value_grad_to_policy = False
    assert stages.loss_kwargs_from_config(cfg, "rl")["value_grad_to_policy"] is False
