"""Grouped-query attention on a 2x2x2 (data x fsdp x tensor) mesh: the sft loss and gradients
equal one device's, with the KV heads replicated (the default rules name no 'kv_heads') and
sharded over tensor by an added rule."""
import jax
import numpy as np
import pytest

from sparrow_jax import sharding as shd
from sparrow_jax.config import default_config
from sparrow_jax.model import hydra
from sparrow_jax.train import stages
from sparrow_jax.train.trainable import STAGE_ROLES
from test_sharded_vs_unsharded import run_loss_and_grads
from tiny_models import tiny_config


@pytest.mark.parametrize("kv_rule", [False, True])
def test_gqa_sharded_matches_single_device(kv_rule):
    cfg = tiny_config(mesh=(2, 2, 2), position="rotary", n_heads=4, head_dim=8, n_kv_heads=2,
                      mlp="swiglu")
    if kv_rule:
        cfg.mesh.logical_axis_rules = [("kv_heads", "tensor")] + list(cfg.mesh.logical_axis_rules)
    params = jax.tree.map(np.asarray, hydra.init_params(cfg.model, jax.random.PRNGKey(0),
                                                        roles=STAGE_ROLES["sft"]))
    batch = stages.example_batch("sft", 8, 16, cfg.model.vocab_size, seed=3)
    mesh8 = shd.make_mesh(cfg.mesh)
    loss8, grads8 = run_loss_and_grads(cfg, mesh8, "sft", params, batch)
    loss1, grads1 = run_loss_and_grads(cfg, shd.make_mesh(default_config().mesh,
                                                          jax.devices()[:1]), "sft", params, batch)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    for g8, g1 in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1)):
        np.testing.assert_allclose(g8, g1, rtol=2e-4, atol=2e-6)
    key_spec = str(grads8["policy"]["layers"]["attn"]["key"].sharding.spec)
    assert ("tensor" in key_spec) == kv_rule, key_spec
    assert "tensor" in str(grads8["policy"]["layers"]["attn"]["query"].sharding.spec)
