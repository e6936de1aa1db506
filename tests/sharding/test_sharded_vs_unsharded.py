"""Loss and gradients on a 2x2x2 (data x fsdp x tensor) mesh equal those on 1 device."""
import jax
import numpy as np
import pytest

from sparrow_jax import sharding as shd
from sparrow_jax.config import default_config
from tiny_models import tiny_config
from sparrow_jax.model import hydra
from sparrow_jax.train import stages
from sparrow_jax.train.step import batch_shardings, loss_and_grads
from sparrow_jax.train.trainable import STAGE_ROLES, split_params


def tiny_cfg():
    cfg = tiny_config(mesh=(2, 2, 2))
    return cfg


def run_loss_and_grads(cfg, mesh, stage, params, batch):
    rules = shd.rules_from_config(cfg.mesh)
    roles = STAGE_ROLES[stage]
    axes = hydra.param_logical_axes(cfg.model, roles=roles)
    params = jax.device_put(params, shd.shardings_for(axes, mesh, rules, params))
    batch = jax.device_put(batch, batch_shardings(batch, mesh, rules))
    loss_fn = stages.loss_fn_for_stage(stage, cfg.model)
    trainable, frozen = split_params(params, stage)
    fn = jax.jit(lambda tr, fr, b: loss_and_grads(loss_fn, tr, fr, b, jax.random.PRNGKey(1)))
    with shd.activation_sharding(mesh, rules):
        loss, _, grads = fn(trainable, frozen, batch)
    return loss, grads


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_sharded_matches_single_device(stage):
    cfg = tiny_cfg()
    params = hydra.init_params(cfg.model, jax.random.PRNGKey(0), roles=STAGE_ROLES[stage])
    params = jax.tree.map(np.asarray, params)
    if stage == "rl":  # make the teacher differ from the policy so the KL term is live
        params["teacher"] = jax.tree.map(lambda x: x * 1.1, params["teacher"])
    batch = stages.example_batch(stage, 8, 16, cfg.model.vocab_size, seed=3)

    mesh8 = shd.make_mesh(cfg.mesh)
    assert mesh8.devices.size == 8
    mesh1 = shd.make_mesh(default_config().mesh, jax.devices()[:1])
    loss8, grads8 = run_loss_and_grads(cfg, mesh8, stage, params, batch)
    loss1, grads1 = run_loss_and_grads(cfg, mesh1, stage, params, batch)

    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    assert jax.tree.structure(grads8) == jax.tree.structure(grads1)
    for g8, g1 in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1)):
        np.testing.assert_allclose(g8, g1, rtol=2e-4, atol=2e-6)
    # Not vacuous: the 8-device gradients really are split across devices.
    specs = [g.sharding.spec for g in jax.tree.leaves(grads8)]
    assert any("tensor" in str(s) for s in specs) and any("fsdp" in str(s) for s in specs)
    assert float(jax.tree.reduce(lambda a, g: a + float(np.abs(g).sum()), grads1, 0.0)) > 0
