"""Losses against NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparrow_jax.losses.a2c import a2c_loss, kl_teacher_policy, undiscounted_returns
from sparrow_jax.losses.preference import preference_loss
from sparrow_jax.losses.rule import rule_loss
from sparrow_jax.losses.sft import sft_loss


def np_log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_sft_loss_is_mean_nll_over_masked_tokens():
    rs = np.random.RandomState(0)
    logits = rs.randn(3, 5, 7).astype(np.float32)
    targets = rs.randint(0, 7, (3, 5))
    mask = (rs.rand(3, 5) < 0.5).astype(np.float32)
    mask[0, 0] = 1
    logp = np_log_softmax(logits)
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    expected = (nll * mask).sum() / mask.sum()
    loss, metrics = sft_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert metrics["tokens"] == mask.sum()
    # Masked-out tokens do not matter.
    logits2 = logits.copy()
    logits2[mask == 0] = 100.0 * rs.randn(int((mask == 0).sum()), 7)
    loss2, _ = sft_loss(jnp.asarray(logits2), jnp.asarray(targets), jnp.asarray(mask))
    np.testing.assert_allclose(loss2, expected, rtol=1e-5)


def test_preference_softmax_ce_over_k():
    rs = np.random.RandomState(1)
    elo = rs.randn(6, 4).astype(np.float32)
    chosen = rs.randint(0, 4, 6)
    expected = -np_log_softmax(elo)[np.arange(6), chosen].mean()
    loss, metrics = preference_loss(jnp.asarray(elo), jnp.asarray(chosen), centring_coef=0.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # With the centring penalty: + coef * mean(elo^2).
    loss_c, _ = preference_loss(jnp.asarray(elo), jnp.asarray(chosen), centring_coef=0.1)
    np.testing.assert_allclose(loss_c, expected + 0.1 * (elo ** 2).mean(), rtol=1e-5)


def test_preference_k2_is_bradley_terry():
    rs = np.random.RandomState(2)
    elo = rs.randn(10, 2).astype(np.float32)
    chosen = rs.randint(0, 2, 10)
    diff = elo[np.arange(10), chosen] - elo[np.arange(10), 1 - chosen]
    bt = np.mean(np.log1p(np.exp(-diff)))  # -log sigmoid(diff)
    loss, _ = preference_loss(jnp.asarray(elo), jnp.asarray(chosen), centring_coef=0.0)
    np.testing.assert_allclose(loss, bt, rtol=1e-5)


def test_preference_invalid_candidates_and_aux():
    rs = np.random.RandomState(3)
    elo = rs.randn(4, 3).astype(np.float32)
    valid = np.array([[1, 1, 0]] * 4, bool)
    chosen = np.array([0, 1, 0, 1])
    expected_pref = -np_log_softmax(elo[:, :2])[np.arange(4), chosen].mean()
    targets = rs.randint(0, 2, (4, 3)).astype(np.float32)
    aux_mask = np.array([[1, 0, 1]] * 4, bool)  # column 2 is invalid, so only column 0 counts
    p = 1 / (1 + np.exp(-elo[:, 0]))
    expected_aux = -np.mean(targets[:, 0] * np.log(p) + (1 - targets[:, 0]) * np.log(1 - p))
    loss, metrics = preference_loss(
        jnp.asarray(elo), jnp.asarray(chosen), jnp.asarray(valid), aux_logits_BxK=jnp.asarray(elo),
        aux_targets_BxK=jnp.asarray(targets), aux_mask_BxK=jnp.asarray(aux_mask),
        centring_coef=0.0)
    np.testing.assert_allclose(metrics["pref_loss"], expected_pref, rtol=1e-5)
    np.testing.assert_allclose(metrics["aux_loss"], expected_aux, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.5 * expected_pref + 0.5 * expected_aux, rtol=1e-5)


def test_rule_loss_is_binary_ce_of_yes():
    rs = np.random.RandomState(4)
    logits = rs.randn(8, 2).astype(np.float32)
    broken = rs.randint(0, 2, 8)
    p_yes = 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0])))
    expected = -np.mean(broken * np.log(p_yes) + (1 - broken) * np.log(1 - p_yes))
    loss, metrics = rule_loss(jnp.asarray(logits), jnp.asarray(broken))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["p_broken"], p_yes.mean(), rtol=1e-5)


def test_kl_teacher_policy_matches_numpy():
    rs = np.random.RandomState(5)
    p_logits, q_logits = rs.randn(2, 3, 6), rs.randn(2, 3, 6)
    logp, logq = np_log_softmax(p_logits), np_log_softmax(q_logits)
    expected = (np.exp(logq) * (logq - logp)).sum(-1)
    np.testing.assert_allclose(kl_teacher_policy(jnp.asarray(p_logits), jnp.asarray(q_logits)),
                               expected, rtol=1e-5, atol=1e-6)
    assert np.allclose(kl_teacher_policy(jnp.asarray(p_logits), jnp.asarray(p_logits)), 0,
                       atol=1e-6)


def _a2c_numpy(p_logits, q_logits, values, actions, rewards, mask, alpha, value_coef, ent_coef):
    logp, logq = np_log_softmax(p_logits), np_log_softmax(q_logits)
    returns = np.flip(np.cumsum(np.flip(rewards, -1), -1), -1)
    adv = returns - values
    logp_a = np.take_along_axis(logp, actions[..., None], -1)[..., 0]
    mean = lambda x: (x * mask).sum() / mask.sum()
    pg = -mean(adv * logp_a)
    vl = 0.5 * mean((values - returns) ** 2)
    kl = mean((np.exp(logq) * (logq - logp)).sum(-1))
    ent = mean(-(np.exp(logp) * logp).sum(-1))
    return alpha * kl + (1 - alpha) * (pg + value_coef * vl) - ent_coef * ent


def test_a2c_loss_matches_numpy_and_masks():
    rs = np.random.RandomState(6)
    B, T, V = 2, 5, 7
    p, q = rs.randn(B, T, V).astype(np.float32), rs.randn(B, T, V).astype(np.float32)
    values = rs.randn(B, T).astype(np.float32)
    actions = rs.randint(0, V, (B, T))
    rewards = np.zeros((B, T), np.float32)
    rewards[:, -1] = [1.0, -0.5]
    mask = np.array([[0, 1, 1, 0, 1], [1, 1, 0, 0, 1]], np.float32)
    expected = _a2c_numpy(p, q, values, actions, rewards, mask, 0.1, 0.5, 0.01)
    loss, m = a2c_loss(*map(jnp.asarray, (p, q, values, actions, rewards, mask, mask)),
                       alpha=0.1, value_coef=0.5, entropy_coef=0.01)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # User / search-result tokens (mask 0) get no gradient through the policy logits.
    rest = tuple(map(jnp.asarray, (q, values, actions, rewards, mask, mask)))
    grad = jax.grad(lambda x: a2c_loss(x, *rest)[0])(jnp.asarray(p))
    assert np.all(np.asarray(grad)[mask == 0] == 0)
    assert np.any(np.asarray(grad)[mask == 1] != 0)


def test_a2c_without_entropy_weight_matches_numpy_and_still_reports_entropy():
    """entropy_coef=0 leaves the entropy out of the loss (no backward through it): loss and
    gradient equal a traced zero weight's, and the entropy metric is still reported."""
    rs = np.random.RandomState(8)
    B, T, V = 2, 4, 6
    p, q = rs.randn(B, T, V).astype(np.float32), rs.randn(B, T, V).astype(np.float32)
    rest = (q, rs.randn(B, T).astype(np.float32), rs.randint(0, V, (B, T)),
            rs.randn(B, T).astype(np.float32), np.ones((B, T), np.float32))
    rest = tuple(map(jnp.asarray, rest + rest[-1:]))  # every policy token sampled
    expected = _a2c_numpy(p, *map(np.asarray, rest[:-1]), 0.1, 1.0, 0.0)
    loss, metrics = a2c_loss(jnp.asarray(p), *rest, entropy_coef=0.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    logp = np_log_softmax(p)
    np.testing.assert_allclose(metrics["entropy"], np.mean(-(np.exp(logp) * logp).sum(-1)),
                               rtol=1e-5)
    grads = [jax.grad(lambda x, c=coef: a2c_loss(x, *rest, entropy_coef=c)[0])(jnp.asarray(p))
             for coef in (0.0, jnp.float32(0.0))]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-7)


def test_a2c_reward_kl_form_and_returns():
    np.testing.assert_allclose(undiscounted_returns(jnp.array([[0., 1., 0., 2.]])),
                               [[3., 3., 2., 2.]])
    rs = np.random.RandomState(7)
    p, q = rs.randn(1, 3, 4).astype(np.float32), rs.randn(1, 3, 4).astype(np.float32)
    values, actions = np.zeros((1, 3), np.float32), np.array([[1, 2, 3]])
    rewards, mask = np.array([[0., 0., 1.]], np.float32), np.ones((1, 3), np.float32)
    logp, logq = np_log_softmax(p), np_log_softmax(q)
    sample_kl = (np.take_along_axis(logp, actions[..., None], -1)
                 - np.take_along_axis(logq, actions[..., None], -1))[..., 0]
    shaped = rewards - 0.2 * sample_kl
    returns = np.flip(np.cumsum(np.flip(shaped, -1), -1), -1)
    logp_a = np.take_along_axis(logp, actions[..., None], -1)[..., 0]
    expected = -np.mean(returns * logp_a) + 0.5 * np.mean(returns ** 2)
    loss, _ = a2c_loss(*map(jnp.asarray, (p, q, values, actions, rewards, mask, mask)),
                       kl_mode="reward", kl_coef=0.2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    with pytest.raises(ValueError):
        a2c_loss(*map(jnp.asarray, (p, q, values, actions, rewards, mask, mask)), kl_mode="nope")
