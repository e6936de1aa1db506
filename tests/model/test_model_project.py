"""layers.project: the weight projections' written-out VJP against plain autodiff, and the
forward-only bf16-input projection (rl.projection_dtype) against NumPy."""
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


def _bf16_rounded(a):
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("equation,x_shape,w_shape", PROJECTIONS)
def test_bfloat16_input_projection_is_rounded_inputs_summed_in_float32(equation, x_shape, w_shape):
    """rl.projection_dtype=bfloat16 in a float32 model: NumPy on the bf16-rounded inputs,
    accumulated in float64, within float32 summation error; output float32."""
    spec = ModelSpec.of(tiny_model_cfg()).with_projection_dtype("bfloat16")
    x, w = _inputs(x_shape, w_shape, jnp.float32)
    got = jax.jit(lambda x, w: project(equation, x, w, spec))(x, w)
    assert got.dtype == jnp.float32
    want = np.einsum(equation, _bf16_rounded(x), _bf16_rounded(w))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # ... and not the float32 projection: the rounding is real at these values.
    assert np.abs(np.asarray(got) - np.einsum(equation, np.asarray(x), np.asarray(w))).max() > 1e-4


def test_projection_dtype_only_narrows_a_float32_model():
    f32 = ModelSpec.of(tiny_model_cfg())
    assert f32.with_projection_dtype("bfloat16").narrow_projection_dtype == jnp.bfloat16
    assert f32.with_projection_dtype("float32") == f32
    bf16 = ModelSpec.of(tiny_model_cfg(compute_dtype="bfloat16"))
    assert bf16.with_projection_dtype("bfloat16") == bf16
    with pytest.raises(ValueError, match="projection dtype must be one of"):
        f32.with_projection_dtype("float16")
