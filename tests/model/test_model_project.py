"""layers.project: the weight projections' written-out VJP against plain autodiff."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import tiny_model_cfg
from sparrow_jax.model.layers import project
from sparrow_jax.model.spec import ModelSpec

# (equation, x shape, w shape): every projection the layers make.
PROJECTIONS = [
    ("btd,dhk->bthk", (2, 5, 8), (8, 3, 4)),
    ("bthk,hkd->btd", (2, 5, 3, 4), (3, 4, 8)),
    ("bld,df->blf", (2, 5, 8), (8, 16)),
    ("blf,fd->bld", (2, 5, 16), (16, 8)),
    ("md,dhk->mhk", (7, 8), (8, 3, 4)),
]


def _inputs(x_shape, w_shape, dtype):
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape, jnp.float32).astype(dtype)
    w = jax.random.normal(jax.random.PRNGKey(1), w_shape, jnp.float32).astype(dtype)
    return x, w


@pytest.mark.parametrize("equation,x_shape,w_shape", PROJECTIONS)
def test_float32_projection_matches_einsum_and_autodiff(equation, x_shape, w_shape):
    spec = ModelSpec.of(tiny_model_cfg(remat="full"))
    x, w = _inputs(x_shape, w_shape, jnp.float32)
    got = jax.jit(lambda x, w: project(equation, x, w, spec))(x, w)
    want = jax.jit(lambda x, w: jnp.einsum(equation, x, w))(x, w)
    np.testing.assert_array_equal(got, want)

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w)))
    grads = jax.jit(jax.grad(loss(lambda x, w: project(equation, x, w, spec)), (0, 1)))(x, w)
    want_grads = jax.grad(loss(lambda x, w: jnp.einsum(equation, x, w)), (0, 1))(x, w)
    for g, wg in zip(grads, want_grads):
        assert g.dtype == wg.dtype and g.shape == wg.shape
        np.testing.assert_allclose(g, wg, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation,x_shape,w_shape", PROJECTIONS[:3])
def test_bfloat16_projection_gradients_near_float32(equation, x_shape, w_shape):
    spec = ModelSpec.of(tiny_model_cfg(remat="full", compute_dtype="bfloat16"))
    x, w = _inputs(x_shape, w_shape, jnp.float32)
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(project(equation, x, w, spec)
                                                 .astype(jnp.float32) ** 2), (0, 1)))
    got = grad(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    want = jax.grad(lambda x, w: jnp.sum(jnp.einsum(equation, x, w) ** 2), (0, 1))(x, w)
    for g, wg in zip(got, want):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(g.astype(jnp.float32), wg, rtol=0.05, atol=0.05 * np.abs(wg).max())


def test_dot_saving_remat_takes_the_plain_einsum():
    spec = ModelSpec.of(tiny_model_cfg(remat="dots"))
    x, w = _inputs((2, 5, 8), (8, 16), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x, w: project("bld,df->blf", x, w, spec))(x, w)
    assert "custom_vjp" not in str(jaxpr)
