"""The layout the sampler decodes in: its own logical-axis rules for params and activations.

Training shards each weight over `fsdp` along its embed dimension. A forward over a
long batch amortises the all-gather of each layer's weights over B x L tokens; the
decode loop pays it for every generated token, so with the training layout it moves
nearly the whole model per step (`sparrow aot` counts it: `steps.sample.collectives`).

`mesh.decode_logical_axis_rules` gives the sampler other rules (empty = the training
rules, and then nothing is copied). The pod configs split each weight over `fsdp` along
its model dimension (heads, MLP, vocabulary) and the batch over `data` x `tensor`
(`config.model_parallel_decode_rules`): a decode step then all-reduces activations of
[B / (data x tensor), D] per layer instead of gathering weights. Chinchilla 1B, whose 14
heads do not split 4 ways, decodes data-parallel (`config.data_parallel_decode_rules`).

Per RL step, once, before self-play (the trunk is frozen, but the policy top changes):

    rules = decode_rules(cfg.mesh)
    shardings = decode_param_shardings(cfg, mesh)          # once per run
    decode_params = to_decode_layout(params, shardings)   # once per step
    ... rollout / play with Environment(..., mesh=mesh, rules=rules) and decode_params

Sampling draws the same tokens in either layout (tests/sampling/test_decode_layout.py).
"""
from __future__ import annotations

from typing import Any

import jax

from sparrow_jax import sharding as shd
from sparrow_jax.model import hydra

DECODE_ROLES = ("policy",)  # the sampler runs the trunk and the policy top
DECODE_KEYS = ("trunk", "policy")


def decode_rules(mesh_cfg) -> tuple[tuple[str, Any], ...]:
    """The sampler's logical-axis rules: mesh.decode_logical_axis_rules, or the training
    rules (mesh.logical_axis_rules) when that is empty."""
    rules = mesh_cfg.decode_logical_axis_rules or mesh_cfg.logical_axis_rules
    return tuple((logical, tuple(t) if isinstance(t, list) else t) for logical, t in rules)


def uses_training_layout(mesh_cfg) -> bool:
    """True when decoding reads the training layout (no copy of the weights)."""
    return decode_rules(mesh_cfg) == shd.rules_from_config(mesh_cfg)


def decode_param_shapes(model_cfg):
    """ShapeDtypeStructs of the params the sampler reads ({'trunk', 'policy'}); no allocation."""
    shapes = jax.eval_shape(lambda r: hydra.init_params(model_cfg, r, roles=DECODE_ROLES),
                            jax.random.PRNGKey(0))
    return {k: shapes[k] for k in DECODE_KEYS}


def decode_param_shardings(cfg, mesh, rules=None):
    """NamedShardings of {'trunk', 'policy'} under `rules` (default `decode_rules(cfg.mesh)`);
    a dimension the mesh does not divide is replicated (and logged)."""
    rules = decode_rules(cfg.mesh) if rules is None else rules
    axes = hydra.param_logical_axes(cfg.model, roles=DECODE_ROLES)
    axes = {k: axes[k] for k in DECODE_KEYS}
    return shd.shardings_for(axes, mesh, rules, decode_param_shapes(cfg.model))


def to_decode_layout(params, shardings):
    """{'trunk', 'policy'} of `params` resharded to `shardings` (`decode_param_shardings`).

    A copy on device when the layouts differ (the caller drops it after sampling); the
    same arrays when they already have these shardings. Works across processes (jax
    reshards a global array with a compiled identity).
    """
    return jax.device_put({k: params[k] for k in DECODE_KEYS}, shardings)
