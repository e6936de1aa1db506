"""rl.value_lr_scale: the value head's step size over the policy's, and nothing else changes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparrow_jax import config as config_lib
from sparrow_jax import sharding as shd
from sparrow_jax.train.optimizer import make_optimizer
from sparrow_jax.train.stages import build_stage
from tests.tiny_models import tiny_config

PARAMS = {"policy": {"w": jnp.ones(3)}, "value": {"hidden_0": jnp.ones((2, 2)), "out": jnp.ones(2)}}
GRADS = {"policy": {"w": jnp.array([0.1, -0.2, 0.3])},
         "value": {"hidden_0": jnp.array([[0.5, -0.5], [0.25, 0.0]]), "out": jnp.array([1.0, -2.0])}}


def _two_updates(optimizer):
    """The updates of two steps with the same gradients (Adam's moments carry over)."""
    state = optimizer.init(PARAMS)
    first, state = optimizer.update(GRADS, state, PARAMS)
    second, _ = optimizer.update(GRADS, state, PARAMS)
    return first, second


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_scaled_role_moves_scale_times_as_far_and_the_rest_as_before(name):
    train_cfg = config_lib.default_config().train
    train_cfg.optimizer, train_cfg.learning_rate, train_cfg.warmup_steps = name, 1e-2, 0
    base, _ = make_optimizer(train_cfg, 10)
    scaled, _ = make_optimizer(train_cfg, 10, {"value": 10.0, "policy": 1.0})
    for plain, with_scale in zip(_two_updates(base), _two_updates(scaled)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-6),
                     plain["policy"], with_scale["policy"])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(b, 10.0 * a, rtol=1e-6),
                     plain["value"], with_scale["value"])


def test_rl_stage_optimizer_scales_only_the_value_head():
    cfg = tiny_config()
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    cfg.rl.value_lr_scale = 4.0
    setup = build_stage(cfg, mesh, "rl", log_unsharded=False)
    cfg.rl.value_lr_scale = 1.0
    plain = build_stage(cfg, mesh, "rl", log_unsharded=False)
    trainable = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype),
                             setup.abstract_state.params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), trainable)
    scaled_update, _ = setup.optimizer.update(grads, setup.optimizer.init(trainable), trainable)
    plain_update, _ = plain.optimizer.update(grads, plain.optimizer.init(trainable), trainable)
    assert set(scaled_update) >= {"policy", "value"}
    for role in scaled_update:
        factor = 4.0 if role == "value" else 1.0
        jax.tree.map(lambda a, b, f=factor: np.testing.assert_allclose(b, f * a, rtol=1e-6),
                     plain_update[role], scaled_update[role])


def test_non_positive_value_lr_scale_is_named():
    cfg = config_lib.default_config()
    cfg.rl.value_lr_scale = 0.0
    with pytest.raises(config_lib.ConfigError, match="rl.value_lr_scale"):
        config_lib.validate(cfg)
