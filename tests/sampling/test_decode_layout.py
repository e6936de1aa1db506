"""The decode layout (sampling/layout.py): the sampler draws the same turns from weights
resharded to it as from the training layout, on 8 simulated devices (2 x 2 x 2)."""
import jax
import numpy as np
import pytest

from sampling_helpers import ragged_prompts, tiny_model_cfg, tiny_params, IDS
from sparrow_jax import sharding as shd
from sparrow_jax.config import (ConfigError, data_parallel_decode_rules, default_config,
                                model_parallel_decode_rules, validate)
from sparrow_jax.model import hydra
from sparrow_jax.sampling import layout, sampler
from sparrow_jax.sampling.sampler import SamplingConfig


def mesh_config(decode_rules):
    cfg = default_config()
    cfg.model = tiny_model_cfg()
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 2
    cfg.mesh.decode_logical_axis_rules = decode_rules
    validate(cfg)
    return cfg


def training_layout_params(cfg, mesh, seed=3):
    params = tiny_params(cfg.model, seed=seed, roles=("policy", "value"))
    axes = hydra.param_logical_axes(cfg.model, roles=("policy", "value"))
    return jax.device_put(params, shd.shardings_for(axes, mesh, shd.rules_from_config(cfg.mesh),
                                                    params))


@pytest.mark.parametrize("decode_rules", [model_parallel_decode_rules(),
                                          data_parallel_decode_rules()],
                         ids=["model_parallel", "data_parallel"])
def test_same_turns_in_the_decode_layout(decode_rules):
    cfg = mesh_config(decode_rules)
    mesh = shd.make_mesh(cfg.mesh)
    train_rules, rules = shd.rules_from_config(cfg.mesh), layout.decode_rules(cfg.mesh)
    assert not layout.uses_training_layout(cfg.mesh)
    params = training_layout_params(cfg, mesh)
    decode_params = layout.to_decode_layout(params, layout.decode_param_shardings(cfg, mesh))
    assert set(decode_params) == {"trunk", "policy"}

    wi = decode_params["policy"]["layers"]["mlp"]["wi"]  # [layers, D, F]
    if decode_rules == model_parallel_decode_rules():
        assert wi.sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp")
        assert "fsdp" in str(decode_params["trunk"]["layers"]["attn"]["query"].sharding.spec)
    else:
        assert wi.sharding.is_fully_replicated
    assert params["policy"]["layers"]["mlp"]["wi"].sharding.spec != wi.sharding.spec
    for a, b in zip(jax.tree.leaves({k: params[k] for k in ("trunk", "policy")}),
                    jax.tree.leaves(decode_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # a reshard, not a change

    tokens, valid = ragged_prompts([7, 3, 5, 1, 2, 6, 4, 7], cfg.model.vocab_size)
    config = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=20)
    rng = jax.random.PRNGKey(4)
    trained = sampler.sample(params, cfg.model, tokens, valid, rng, config, IDS, mesh=mesh,
                             rules=train_rules)
    decoded = sampler.sample(decode_params, cfg.model, tokens, valid, rng, config, IDS,
                             mesh=mesh, rules=rules)
    np.testing.assert_array_equal(decoded.tokens_BxN, trained.tokens_BxN)
    np.testing.assert_array_equal(decoded.token_valid_BxN, trained.token_valid_BxN)
    np.testing.assert_array_equal(decoded.lengths_B, trained.lengths_B)
    np.testing.assert_array_equal(decoded.finished_B, trained.finished_B)
    # Sums split across devices in another order: log-probs agree to float32 rounding.
    np.testing.assert_allclose(decoded.logprobs_BxN, trained.logprobs_BxN, rtol=0, atol=2e-6)


def test_empty_decode_rules_mean_the_training_layout_and_no_copy():
    cfg = mesh_config([])
    mesh = shd.make_mesh(cfg.mesh)
    assert layout.uses_training_layout(cfg.mesh)
    assert layout.decode_rules(cfg.mesh) == shd.rules_from_config(cfg.mesh)
    params = training_layout_params(cfg, mesh)
    decode_params = layout.to_decode_layout(params, layout.decode_param_shardings(cfg, mesh))
    for a, b in zip(jax.tree.leaves({k: params[k] for k in ("trunk", "policy")}),
                    jax.tree.leaves(decode_params)):
        assert a is b


def test_bad_decode_rules_name_the_key():
    cfg = default_config()
    cfg.mesh.decode_logical_axis_rules = [("heads", "model")]
    with pytest.raises(ConfigError, match="mesh.decode_logical_axis_rules.*'model'"):
        validate(cfg)
    cfg.mesh.decode_logical_axis_rules = [("heads",)]
    with pytest.raises(ConfigError, match="mesh.decode_logical_axis_rules"):
        validate(cfg)
