"""Update steps: frozen params untouched and without optimizer state; accumulation; optimizer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sparrow_jax import sharding as shd
from sparrow_jax.config import default_config
from tiny_models import tiny_config
from sparrow_jax.train import stages
from sparrow_jax.train.optimizer import make_optimizer, make_schedule
from sparrow_jax.train.state import opt_state_shardings
from sparrow_jax.train.step import loss_and_grads
from sparrow_jax.train.trainable import TRAINABLE_KEYS, merge_params, split_params


def tiny_cfg(optimizer="adamw"):
    cfg = tiny_config(mesh=(2, 2, 2))
    cfg.train.batch_size, cfg.train.seq_len = 8, 16
    cfg.train.warmup_steps = 0  # so the very first update moves the params
    cfg.train.optimizer = optimizer
    return cfg


def _top_key(path):
    for k in path:
        if hasattr(k, "key"):
            return k.key
    return None


@pytest.mark.parametrize("stage,optimizer", [("sft", "adamw"), ("rl", "adafactor")])
def test_frozen_params_unchanged_and_without_optimizer_state(stage, optimizer):
    cfg = tiny_cfg(optimizer)
    mesh = shd.make_mesh(cfg.mesh)
    setup = stages.build_stage(cfg, mesh, stage)
    state = setup.init_fn(jax.random.PRNGKey(0))
    # Created already sharded, on all 8 devices.
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == 8
    assert set(state.params) == set(TRAINABLE_KEYS[stage])
    frozen_before = jax.tree.map(np.array, state.frozen)
    trainable_before = jax.tree.map(np.array, state.params)
    top_keys = {_top_key(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)}
    assert top_keys - {None} == set(TRAINABLE_KEYS[stage])

    batch = stages.example_batch(stage, 8, 16, cfg.model.vocab_size)
    state, metrics = setup.step(state, batch)
    for key in ("loss", "grad_norm", "lr"):
        assert np.isfinite(metrics[key])
    assert metrics["grad_norm"] > 0
    for before, after in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(state.frozen)):
        np.testing.assert_array_equal(before, np.asarray(after))  # bit-identical
    moved = [not np.array_equal(b, np.asarray(a)) for b, a in
             zip(jax.tree.leaves(trainable_before), jax.tree.leaves(state.params))]
    assert any(moved)
    assert int(state.step) == 1


def test_grad_accumulation_matches_full_batch():
    cfg = tiny_cfg()
    mesh = shd.make_mesh(default_config().mesh, jax.devices()[:1])
    setup = stages.build_stage(cfg, mesh, "sft", log_unsharded=False)
    state = setup.init_fn(jax.random.PRNGKey(0))
    batch = stages.example_batch("sft", 8, 16, cfg.model.vocab_size)
    batch["loss_mask_BxL"][:] = 1.0  # equal token counts, so mean of means = mean
    rng = jax.random.PRNGKey(0)
    full = loss_and_grads(setup.loss_fn, state.params, state.frozen, batch, rng, accum=1)
    accum = jax.jit(lambda b: loss_and_grads(setup.loss_fn, state.params, state.frozen, b, rng,
                                             accum=4))(batch)
    np.testing.assert_allclose(full[0], accum[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(full[2]), jax.tree.leaves(accum[2])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_step_with_grad_accum_on_mesh_runs():
    cfg = tiny_cfg()
    cfg.train.grad_accum_steps = 2
    mesh = shd.make_mesh(cfg.mesh)
    setup = stages.build_stage(cfg, mesh, "sft", log_unsharded=False)
    state = setup.init_fn(jax.random.PRNGKey(0))
    state, metrics = setup.step(state, stages.example_batch("sft", 8, 16, 64))
    assert np.isfinite(metrics["loss"]) and int(state.step) == 1


def test_split_and_merge_params():
    params = {"trunk": 1, "policy": 2, "value": 3, "teacher": 4}
    trainable, frozen = split_params(params, "rl")
    assert trainable == {"policy": 2, "value": 3} and frozen == {"trunk": 1, "teacher": 4}
    assert merge_params(trainable, frozen) == params
    with pytest.raises(ValueError, match="pref_rm"):
        split_params(params, "pref_rm")
    with pytest.raises(ValueError):
        split_params(params, "nope")


def test_schedules():
    cfg = default_config().train
    cfg.learning_rate, cfg.warmup_steps, cfg.schedule = 1.0, 10, "cosine"
    s = make_schedule(cfg, 110)
    np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)], [0, 0.5, 1, 0.5, 0], atol=1e-6)
    cfg.schedule = "constant"
    s = make_schedule(cfg, 110)
    np.testing.assert_allclose([s(0), s(5), s(10), s(100)], [0, 0.5, 1, 1], atol=1e-6)


def test_adafactor_state_shardings():
    cfg = default_config()
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 2
    mesh = shd.make_mesh(cfg.mesh)
    cfg.train.optimizer = "adafactor"
    opt, _ = make_optimizer(cfg.train, 10)
    params = {"a": {"w": jax.ShapeDtypeStruct((256, 512), jnp.float32)},
              "b": jax.ShapeDtypeStruct((8,), jnp.float32)}
    param_sh = shd.shardings_for({"a": {"w": P("embed", "mlp")}, "b": P("mlp")}, mesh,
                                 shd.rules_from_config(cfg.mesh), params)
    abstract = jax.eval_shape(opt.init, params)
    sh = opt_state_shardings(abstract, params, param_sh, mesh)
    pairs = list(zip(jax.tree.leaves(abstract), jax.tree.leaves(sh)))
    for leaf, s in pairs:
        if leaf.shape == (8,):
            assert s.spec == P("tensor")  # unfactored stat, same shape as its param
        else:
            assert s.spec == P()  # factored row/col stats and counts: small, replicated
    assert any(leaf.shape == (256,) for leaf, _ in pairs)  # factored indeed
