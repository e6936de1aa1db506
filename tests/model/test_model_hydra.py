"""Hydra: param tree layout, logical axes, role subsets, output shapes and dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from model_helpers import tiny_model_cfg
from sparrow_jax.config import ROLES
from sparrow_jax.model import hydra


def jit_forward(cfg, roles, **kwargs):
    return jax.jit(lambda p, t: hydra.forward(p, cfg, t, roles=roles, **kwargs))


def test_logical_axes_match_params_structure_and_rank():
    cfg = tiny_model_cfg(mlp="gated_gelu")
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), ROLES)
    axes = hydra.param_logical_axes(cfg, ROLES)
    assert jax.tree.structure(params) == jax.tree.structure(
        axes, is_leaf=lambda x: isinstance(x, PartitionSpec))
    pairs = zip(jax.tree.leaves(params),
                jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, PartitionSpec)))
    for leaf, spec in pairs:
        assert isinstance(spec, PartitionSpec)
        assert len(spec) == leaf.ndim
    assert axes["trunk"]["embedding"] == PartitionSpec("vocab", "embed")
    assert axes["policy"]["layers"]["attn"]["rel_proj"] == PartitionSpec(
        "layers", "embed", "heads", "kv")
    assert axes["policy"]["layers"]["mlp"]["wi_gate"] == PartitionSpec("layers", "embed", "mlp")
    assert axes["rule_rm"]["head"] == PartitionSpec("embed", "classes")
    assert axes["value"]["hidden_1"] == PartitionSpec("value_hidden", "value_hidden")


def test_params_are_unboxed_and_param_dtype():
    params = hydra.init_params(tiny_model_cfg(), jax.random.PRNGKey(0), ("policy",))
    for leaf in jax.tree.leaves(params):
        assert isinstance(leaf, jax.Array) and leaf.dtype == jnp.float32


def test_role_subsets_and_value_brings_policy():
    cfg = tiny_model_cfg()
    assert set(hydra.init_params(cfg, jax.random.PRNGKey(0), ("rule_rm",))) == {"trunk", "rule_rm"}
    assert set(hydra.init_params(cfg, jax.random.PRNGKey(0), ("value",))) == {
        "trunk", "policy", "value"}


def test_teacher_starts_as_policy_copy_and_subsets_share_init():
    cfg = tiny_model_cfg()
    full = hydra.init_params(cfg, jax.random.PRNGKey(0), ROLES)
    chex_equal = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
    chex_equal(full["teacher"], full["policy"])
    only_rule = hydra.init_params(cfg, jax.random.PRNGKey(0), ("rule_rm",))
    chex_equal(only_rule["rule_rm"], full["rule_rm"])
    chex_equal(only_rule["trunk"], full["trunk"])


def test_no_frozen_layers_and_tied_embeddings():
    cfg = tiny_model_cfg(n_frozen_layers=0, tied_embeddings=True)
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), ("policy", "teacher"))
    assert set(params["trunk"]) == {"embedding"}
    assert "unembed" not in params["policy"]
    out = jit_forward(cfg, ("policy",))(params, jnp.ones((1, 4), jnp.int32))
    assert out["policy"].shape == (1, 4, cfg.vocab_size)


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_forward_shapes_and_dtypes(compute_dtype):
    cfg = tiny_model_cfg(compute_dtype=compute_dtype)
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), ROLES)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, cfg.vocab_size)
    out = jit_forward(cfg, ROLES)(params, tokens)
    assert set(out) == set(ROLES)
    assert out["policy"].shape == out["teacher"].shape == (2, 5, cfg.vocab_size)
    assert out["value"].shape == out["pref_rm"].shape == (2, 5)
    assert out["rule_rm"].shape == (2, 5, 2)
    for value in out.values():
        assert value.dtype == jnp.float32
        assert np.isfinite(np.asarray(value)).all()


def test_value_alone_runs_policy_top():
    cfg = tiny_model_cfg()
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), ROLES)
    tokens = jnp.arange(6).reshape(1, 6)
    alone = jit_forward(cfg, ("value",))(params, tokens)
    both = jit_forward(cfg, ("policy", "value"))(params, tokens)
    assert set(alone) == {"value"}
    np.testing.assert_array_equal(alone["value"], both["value"])


def test_fully_masked_rows_are_finite():
    cfg = tiny_model_cfg()
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), ROLES)
    valid = jnp.array([[False, False, True, True], [False, False, False, False]])
    out = jit_forward(cfg, ("policy",), valid_BxL=valid)(params, jnp.ones((2, 4), jnp.int32))
    assert np.isfinite(np.asarray(out["policy"])).all()


def test_missing_role_params_is_a_clear_error():
    cfg = tiny_model_cfg()
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), ("policy",))
    with pytest.raises(ValueError, match="rule_rm"):
        hydra.forward(params, cfg, jnp.ones((1, 3), jnp.int32), roles=("rule_rm",))
