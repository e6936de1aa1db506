"""The loss and LM-head fast paths equal the plain formulations they replace.

take_last_axis (dense one-hot gradient instead of take_along_axis's scatter-add),
first_argmax (arithmetic instead of argmax's (value, index) reduction), full-length
logits with `next_token_targets` instead of logits[:, :-1], and the bf16 LM head's
backward (bf16 matmuls instead of float32 on upcast weights).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_models import tiny_model_config
from sparrow_jax.losses.a2c import a2c_loss
from sparrow_jax.losses.sft import first_argmax, masked_mean, sft_loss, take_last_axis
from sparrow_jax.model import hydra
from sparrow_jax.model.heads import lm_logits
from sparrow_jax.train import stages


def _plain_sft_loss(logits_BxLxV, targets_BxL, mask_BxL):
    """sft_loss as written before the fast paths."""
    logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets_BxL[..., None], axis=-1)[..., 0]
    correct = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
    return masked_mean(nll, mask_BxL), {"loss": masked_mean(nll, mask_BxL),
                                         "accuracy": masked_mean(correct, mask_BxL),
                                         "tokens": jnp.sum(mask_BxL.astype(jnp.float32))}


def test_take_last_axis_values_and_gradient_equal_take_along_axis():
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.randn(3, 5, 11).astype(np.float32))
    index = jnp.asarray(rs.randint(0, 11, (3, 5)))
    weights = jnp.asarray(rs.randn(3, 5).astype(np.float32))
    plain = lambda x: jnp.take_along_axis(x, index[..., None], axis=-1)[..., 0]  # noqa: E731
    np.testing.assert_array_equal(take_last_axis(x, index), plain(x))
    grad = jax.grad(lambda x: jnp.sum(take_last_axis(x, index) * weights))(x)
    plain_grad = jax.grad(lambda x: jnp.sum(plain(x) * weights))(x)
    np.testing.assert_array_equal(grad, plain_grad)


def test_first_argmax_equals_argmax_with_ties():
    rs = np.random.RandomState(1)
    x = rs.randn(4, 6, 50).astype(np.float32)
    x[0, 0] = 0.0                      # a constant row: argmax is 0
    x[0, 1, [7, 3, 30]] = 9.0          # a three-way tie for the maximum: the first wins
    x[1, 2, :20] = -np.inf             # -inf entries
    x[2, 3, 49] = 1e30                 # a huge maximum at the end
    x[3, 4] = np.round(x[3, 4])        # many ties below the maximum
    np.testing.assert_array_equal(first_argmax(jnp.asarray(x)), np.argmax(x, axis=-1))
    np.testing.assert_array_equal(jax.jit(first_argmax)(jnp.asarray(x)), np.argmax(x, axis=-1))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sft_loss_value_metrics_and_gradient_equal_the_plain_loss(dtype):
    rs = np.random.RandomState(2)
    logits = jnp.asarray(3 * rs.randn(3, 7, 40), dtype)
    targets = jnp.asarray(rs.randint(0, 40, (3, 7)))
    mask = jnp.asarray((rs.rand(3, 7) < 0.6).astype(np.float32))
    (loss, metrics), grad = jax.value_and_grad(sft_loss, has_aux=True)(logits, targets, mask)
    (ref, ref_metrics), ref_grad = jax.value_and_grad(_plain_sft_loss, has_aux=True)(
        logits, targets, mask)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    for key in ref_metrics:
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(ref_grad, np.float32),
                               rtol=1e-5, atol=1e-7)


def _params_and_batch(stage, roles, length=12):
    cfg = tiny_model_config()
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), roles)
    batch = stages.example_batch(stage, 4, length, cfg.vocab_size, seed=4)
    return cfg, params, jax.tree.map(jnp.asarray, batch)


def test_lm_stage_loss_and_gradient_equal_the_sliced_logits_formulation():
    cfg, params, batch = _params_and_batch("lm", ("policy",))

    def sliced(params):
        out = hydra.forward(params, cfg, batch["tokens_BxL"], positions_BxL=batch["positions_BxL"],
                            valid_BxL=batch["valid_BxL"], segment_ids_BxL=batch["segment_ids_BxL"],
                            roles=("policy",))
        return _plain_sft_loss(out["policy"][:, :-1], batch["tokens_BxL"][:, 1:],
                               batch["loss_mask_BxL"][:, 1:])

    loss_fn = stages.loss_fn_for_stage("lm", cfg)
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(p, batch, jax.random.PRNGKey(0)), has_aux=True)(params)
    (ref, ref_metrics), ref_grads = jax.value_and_grad(sliced, has_aux=True)(params)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    for key in ref_metrics:
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8),
                 grads, ref_grads)


def test_rl_stage_gradient_equals_the_sliced_logits_formulation():
    roles = ("policy", "value", "teacher")
    cfg, params, batch = _params_and_batch("rl", roles)

    def sliced(params):
        out = hydra.forward(params, cfg, batch["tokens_BxL"], valid_BxL=batch["valid_BxL"],
                            roles=roles)
        shift = lambda x: x[:, 1:]  # noqa: E731
        return a2c_loss(out["policy"][:, :-1], out["teacher"][:, :-1], out["value"][:, :-1],
                        shift(batch["tokens_BxL"]), shift(batch["rewards_BxL"]),
                        shift(batch["policy_mask_BxL"]), shift(batch["sampled_mask_BxL"]),
                        entropy_coef=0.01)

    loss_fn = stages.loss_fn_for_stage("rl", cfg, elo_weight=0.0, entropy_coef=0.01)
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(p, batch, jax.random.PRNGKey(0)), has_aux=True)(params)
    (ref, ref_metrics), ref_grads = jax.value_and_grad(sliced, has_aux=True)(params)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    for key in ref_metrics:
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, atol=1e-7)
    for role in ("policy", "value"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8),
                     grads[role], ref_grads[role])


def test_lm_logits_float32_forward_is_the_plain_einsum_and_gradients_match_autodiff():
    rs = np.random.RandomState(5)
    h = jnp.asarray(rs.randn(2, 3, 8).astype(np.float32))
    w = jnp.asarray(rs.randn(8, 10).astype(np.float32))
    plain = lambda h, w: jnp.einsum("bld,dv->blv", h, w)  # noqa: E731
    np.testing.assert_array_equal(lm_logits(h, w), plain(h, w))
    g = jnp.asarray(rs.randn(2, 3, 10).astype(np.float32))
    grads = jax.grad(lambda h, w: jnp.sum(lm_logits(h, w) * g), argnums=(0, 1))(h, w)
    plain_grads = jax.grad(lambda h, w: jnp.sum(plain(h, w) * g), argnums=(0, 1))(h, w)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 grads, plain_grads)


def test_lm_logits_bfloat16_forward_is_exact_and_backward_takes_a_bf16_cotangent():
    rs = np.random.RandomState(6)
    h = jnp.asarray(rs.randn(2, 16, 32), jnp.bfloat16)
    w = jnp.asarray(rs.randn(32, 64), jnp.bfloat16)
    g = jnp.asarray(rs.randn(2, 16, 64).astype(np.float32))
    plain = lambda h, w: jnp.einsum("bld,dv->blv", h, w,  # noqa: E731
                                    preferred_element_type=jnp.float32)
    out = lm_logits(h, w)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, plain(h, w))
    grad_h, grad_w = jax.grad(lambda h, w: jnp.sum(lm_logits(h, w) * g), argnums=(0, 1))(h, w)
    assert grad_h.dtype == grad_w.dtype == jnp.bfloat16
    # Reference in float64 with the cotangent rounded to bf16 first; results round to bf16.
    h64, w64 = np.asarray(h, np.float64), np.asarray(w, np.float64)
    g64 = np.asarray(g.astype(jnp.bfloat16), np.float64)
    np.testing.assert_allclose(np.asarray(grad_h, np.float64), g64 @ w64.T, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(grad_w, np.float64),
                               np.einsum("bld,blv->dv", h64, g64), rtol=1e-2, atol=1e-2)
    # And close to autodiff's float32-cotangent gradients.
    plain_h, plain_w = jax.grad(lambda h, w: jnp.sum(plain(h, w) * g), argnums=(0, 1))(h, w)
    np.testing.assert_allclose(np.asarray(grad_h, np.float32), np.asarray(plain_h, np.float32),
                               rtol=2e-2, atol=5e-2)
    np.testing.assert_allclose(np.asarray(grad_w, np.float32), np.asarray(plain_w, np.float32),
                               rtol=2e-2, atol=5e-2)
