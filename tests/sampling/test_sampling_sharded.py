"""Sampling on a 2x2x2 (data x fsdp x tensor) mesh draws the same tokens as on one device."""
import jax
import numpy as np

from sampling_helpers import EOT, IDS, ragged_prompts, tiny_model_cfg, tiny_params
from sparrow_jax import sharding as shd
from sparrow_jax.config import default_config
from sparrow_jax.model import hydra
from sparrow_jax.sampling import sampler
from sparrow_jax.sampling.sampler import SamplingConfig


def test_sharded_matches_single_device():
    cfg = default_config()
    cfg.model = tiny_model_cfg()
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 2
    mesh = shd.make_mesh(cfg.mesh)
    assert mesh.devices.size == 8
    rules = shd.rules_from_config(cfg.mesh)
    params = tiny_params(cfg.model, seed=2)
    axes = hydra.param_logical_axes(cfg.model, roles=("policy",))
    sharded = jax.device_put(params, shd.shardings_for(axes, mesh, rules, params))
    assert any("tensor" in str(x.sharding.spec) for x in jax.tree.leaves(sharded))

    tokens, valid = ragged_prompts([7, 3, 5, 1, 2, 6, 4, 7], cfg.model.vocab_size)
    config = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=20)
    rng = jax.random.PRNGKey(4)
    one = sampler.sample(params, cfg.model, tokens, valid, rng, config, IDS)
    eight = sampler.sample(sharded, cfg.model, tokens, valid, rng, config, IDS, mesh=mesh,
                           rules=rules)
    # the batch really is split; with a mesh the sampler hands back this process's rows as numpy
    assert "data" in str(sampler.batch_sharding(mesh, rules, tokens.shape).spec)
    assert isinstance(eight.tokens_BxN, np.ndarray)
    np.testing.assert_array_equal(eight.tokens_BxN, one.tokens_BxN)
    np.testing.assert_array_equal(eight.lengths_B, one.lengths_B)
    np.testing.assert_allclose(eight.logprobs_BxN, one.logprobs_BxN, rtol=1e-5, atol=1e-5)

    role_tokens, role_valid = ragged_prompts([7, 3, 5, 1, 2, 6, 4, 7], cfg.model.vocab_size,
                                             end=EOT)
    step_args = ((5, 6), "free", [jax.random.PRNGKey(i) for i in range(3)], (config, config), IDS)
    one_step = sampler.sample_step(params, cfg.model, role_tokens, role_valid, *step_args)
    eight_step = sampler.sample_step(sharded, cfg.model, role_tokens, role_valid, *step_args,
                                     mesh=mesh, rules=rules)
    np.testing.assert_allclose(eight_step.role_logprobs_Bx2, one_step.role_logprobs_Bx2,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(eight_step.role_index_B, one_step.role_index_B)
    np.testing.assert_array_equal(eight_step.turn.tokens_BxN, one_step.turn.tokens_BxN)
