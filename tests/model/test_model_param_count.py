"""Parameter counts: an analytic formula for small configs, and the 70B config by shape only."""
import os

import jax
import pytest

from model_helpers import tiny_model_cfg
from sparrow_jax.config import ROLES, load_experiment
from sparrow_jax.model import hydra

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def expected_param_count(m, roles):
    """Count written from the architecture, independently of the module code."""
    d, h, k, f, v = m.d_model, m.n_heads, m.head_dim, m.d_ff, m.vocab_size
    attention = 4 * d * h * k                          # query, key, value, out
    if m.position == "relative":
        attention += d * h * k + 2 * h * k             # W_r, u, v
    mlp = (3 if m.mlp == "gated_gelu" else 2) * d * f  # (gate, up,) in, out
    layer = attention + mlp + 2 * d                    # two RMSNorm scales
    top_layers = (m.n_layers - m.n_frozen_layers) * layer + d  # + final norm
    total = v * d + m.n_frozen_layers * layer          # trunk: embedding + frozen layers
    if {"policy", "value"} & set(roles):
        total += top_layers + (0 if m.tied_embeddings else d * v)
    if "teacher" in roles:
        total += top_layers + (0 if m.tied_embeddings else d * v)
    if "pref_rm" in roles:
        total += top_layers + d
    if "rule_rm" in roles:
        total += top_layers + 2 * d
    if "value" in roles:
        width = d
        for _ in range(m.value_layers):
            total += width * m.value_hidden
            width = m.value_hidden
        total += width
    return total


def _abstract_count(cfg, roles):
    shapes = jax.eval_shape(lambda r: hydra.init_params(cfg, r, roles), jax.random.PRNGKey(0))
    return hydra.count_params(shapes)


@pytest.mark.parametrize("overrides,roles", [
    ({}, ROLES),
    (dict(mlp="gated_gelu", tied_embeddings=True, value_layers=3), ROLES),
    (dict(position="rotary", n_frozen_layers=0), ("policy", "rule_rm")),
    (dict(value_layers=0), ("value",)),
])
def test_param_count_matches_formula(overrides, roles):
    cfg = tiny_model_cfg(**overrides)
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), roles)
    assert hydra.count_params(params) == expected_param_count(cfg, roles)
    assert _abstract_count(cfg, roles) == hydra.count_params(params)


def test_sparrow_70b_trunk_plus_policy_is_70b():
    cfg = load_experiment(os.path.join(REPO, "experiments", "sparrow_70b.py")).model
    count = _abstract_count(cfg, ("policy",))
    assert count == expected_param_count(cfg, ("policy",))
    assert 69e9 < count < 71e9, count
    axes = hydra.param_logical_axes(cfg, ("policy",))
    assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) \
        == jax.tree.structure(jax.eval_shape(lambda r: hydra.init_params(cfg, r, ("policy",)),
                                             jax.random.PRNGKey(0)))
