"""TrainState and creating it already sharded (never materialised on one device).

The hydra's params are split per stage (`trainable.split_params`): `params` holds
the trainable subtree, the only one the optimizer sees; `frozen` holds the rest.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sparrow_jax import sharding as shd
from sparrow_jax.train.trainable import split_params


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # int32 scalar: number of updates applied
    params: Any            # trainable subtree of the hydra params
    frozen: Any            # frozen subtree (no gradients, no optimizer state)
    opt_state: Any         # optimizer state over `params` only
    rng: jax.Array         # uint32[2] PRNG key data


def init_state(params: dict, stage: str, optimizer, rng: jax.Array) -> TrainState:
    """A fresh TrainState from full hydra params (pure; jit it with out_shardings)."""
    trainable, frozen = split_params(params, stage)
    return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, frozen=frozen,
                      opt_state=optimizer.init(trainable), rng=rng)


def without_frozen(state: TrainState) -> dict:
    """What a checkpoint stores of a state whose frozen parts are kept by reference
    (`train/frozen_sources.py`): step, params, opt_state, rng. Works on abstract states."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}


def with_frozen(stored: dict, frozen: Any) -> TrainState:
    """The TrainState back from `without_frozen(...)` and its frozen parts."""
    return TrainState(step=stored["step"], params=stored["params"], frozen=frozen,
                      opt_state=stored["opt_state"], rng=stored["rng"])


def _key_path(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def opt_state_shardings(abstract_opt_state, abstract_params, param_shardings, mesh: Mesh):
    """Shard optimizer-state leaves like their parameter when the shapes match.

    A leaf whose key path ends with a parameter's path and has that parameter's
    shape (Adam moments, unfactored Adafactor stats) takes its sharding; anything
    else (step counts, Adafactor's factored row/column stats, which are small) is
    replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    by_path = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(abstract_params),
                                jax.tree_util.tree_leaves(param_shardings)):
        by_path[_key_path(path)] = (tuple(leaf.shape), sh)
    lengths = sorted({len(p) for p in by_path}, reverse=True)

    def pick(path, leaf):
        keys = _key_path(path)
        for n in lengths:
            hit = by_path.get(keys[-n:]) if n <= len(keys) else None
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def state_shardings(abstract_state: TrainState, param_shardings: dict, mesh: Mesh) -> TrainState:
    """NamedShardings for every leaf of a TrainState.

    Args:
      abstract_state: from jax.eval_shape(init_state...).
      param_shardings: shardings of the full (unsplit) hydra params.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    trainable_sh = {k: param_shardings[k] for k in abstract_state.params}
    frozen_sh = {k: param_shardings[k] for k in abstract_state.frozen}
    return TrainState(
        step=replicated, params=trainable_sh, frozen=frozen_sh,
        opt_state=opt_state_shardings(abstract_state.opt_state, abstract_state.params,
                                      trainable_sh, mesh),
        rng=replicated)


def sharded_state_factory(init_params: Callable[[jax.Array], dict], param_logical_axes: dict,
                          stage: str, optimizer, mesh: Mesh, rules):
    """Build (init_fn, abstract_state, shardings) for a stage on a mesh.

    `init_fn(rng)` is jitted with out_shardings, so params and optimizer state are
    created directly in their shards. `abstract_state` leaves are ShapeDtypeStructs
    carrying their NamedSharding (for `.lower()` without allocating anything).

    Args:
      init_params: rng -> full hydra params (e.g. partial(hydra.init_params, cfg, roles=...)).
      param_logical_axes: same tree as the params; leaves = logical PartitionSpecs.
    """
    def build(rng):
        params_rng, state_rng = jax.random.split(rng)
        return init_state(init_params(params_rng), stage, optimizer, state_rng)

    rng0 = jax.random.PRNGKey(0)
    abstract = jax.eval_shape(build, rng0)
    abstract_params = jax.eval_shape(init_params, rng0)
    param_sh = shd.shardings_for(param_logical_axes, mesh, rules, abstract_params)
    shardings = state_shardings(abstract, param_sh, mesh)
    init_fn = jax.jit(build, out_shardings=shardings)
    return init_fn, shd.abstract_with_shardings(abstract, shardings), shardings


def count_params(tree) -> int:
    """Total number of elements over the leaves of a (possibly abstract) pytree."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
