"""The jitted update step: gradients of a loss over the trainable params only.

    step(state, batch) -> (state, metrics)

jitted with in/out shardings and the state donated. With grad_accum_steps = A > 1
the batch is split into A microbatches, scanned with lax.scan, and the mean of
their gradients is applied once. Microbatch i takes rows i, i + A, i + 2A, ... so
each device's rows split locally (no resharding of the batch).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sparrow_jax import sharding as shd
from sparrow_jax.train.state import TrainState
from sparrow_jax.train.trainable import merge_params

# (params, batch, rng) -> (scalar loss, metrics dict of scalars)
LossFn = Callable[[dict, dict, jax.Array], tuple[jax.Array, dict]]


def split_microbatches(batch: dict, accum: int) -> dict:
    """[B, ...] leaves -> [A, B/A, ...], microbatch i = rows i::A."""
    def split(x):
        if x.shape[0] % accum:
            raise ValueError(f"batch dim {x.shape[0]} not divisible by grad_accum_steps={accum}")
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return jax.tree.map(split, batch)


def _constrain_like(tree, shardings):
    return jax.tree.map(jax.lax.with_sharding_constraint, tree, shardings)


def loss_and_grads(loss_fn: LossFn, trainable: dict, frozen: dict, batch: dict, rng: jax.Array,
                   accum: int = 1, grad_shardings: Any = None, micro_shardings: Any = None):
    """Mean loss, metrics and gradients w.r.t. `trainable` over `accum` microbatches."""
    def objective(tr, mb, r):
        return loss_fn(merge_params(tr, frozen), mb, r)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    if accum == 1:
        (loss, metrics), grads = grad_fn(trainable, batch, rng)
        return loss, metrics, grads

    micro = split_microbatches(batch, accum)
    if micro_shardings is not None:
        micro = _constrain_like(micro, micro_shardings)
    rngs = jax.random.split(rng, accum)

    def body(grads_acc, inputs):
        mb, r = inputs
        (loss, metrics), grads = grad_fn(trainable, mb, r)
        grads_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grads_acc, grads)
        if grad_shardings is not None:
            grads_acc = _constrain_like(grads_acc, grad_shardings)
        return grads_acc, (loss, metrics)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
    if grad_shardings is not None:
        zeros = _constrain_like(zeros, grad_shardings)
    grads, (losses, metrics) = jax.lax.scan(body, zeros, (micro, rngs))
    grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), grads, trainable)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
    return jnp.mean(losses), metrics, grads


def apply_gradients(state: TrainState, loss, metrics: dict, grads, optimizer, schedule):
    """The optimizer update from a step's loss, metrics and gradients (pure)."""
    rng, _ = jax.random.split(state.rng)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Numerical guard: a non-finite loss or gradient norm leaves params and
    # optimizer state as they were; the step (and data position) still advance,
    # and `nonfinite` = 1 tells the loop to count it.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_old = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep_old, params, state.params)
    opt_state = jax.tree.map(keep_old, opt_state, state.opt_state)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, lr=schedule(state.step),
                   nonfinite=(~finite).astype(jnp.float32))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    return new_state, metrics


def update(state: TrainState, batch: dict, loss_fn: LossFn, optimizer, schedule,
           accum: int = 1, grad_shardings: Any = None, micro_shardings: Any = None):
    """One optimizer update (pure; `make_train_step` jits it)."""
    _, step_rng = jax.random.split(state.rng)
    loss, metrics, grads = loss_and_grads(loss_fn, state.params, state.frozen, batch, step_rng,
                                          accum, grad_shardings, micro_shardings)
    return apply_gradients(state, loss, metrics, grads, optimizer, schedule)


class TrainStep:
    """A jitted update step (or one of `part_step.PartSteps`' two programs) that traces under
    the mesh and logical-axis rules.

    Call it like the function (`state, metrics = step(state, batch)`), or
    `step.lower(abstract_state, abstract_batch)` for AOT compilation.
    """

    def __init__(self, jitted, mesh: Mesh, rules):
        self._jitted = jitted
        self.mesh = mesh
        self.rules = tuple(rules)

    def __call__(self, state, batch):
        with shd.activation_sharding(self.mesh, self.rules):
            return self._jitted(state, batch)

    def lower(self, state, batch):
        with shd.activation_sharding(self.mesh, self.rules):
            return self._jitted.lower(state, batch)


def batch_shardings(batch_shapes: dict, mesh: Mesh, rules, leading: int = 0) -> dict:
    """Shard each batch leaf's batch dim (after `leading` dims) by the 'batch' rule.

    A batch dim the batch axes do not divide is replicated (and logged).
    """
    def logical(x):
        n = len(x.shape)
        return PartitionSpec(*((None,) * leading + ("batch",) + (None,) * (n - leading - 1)))
    specs = jax.tree.map(logical, batch_shapes)
    return shd.shardings_for(specs, mesh, rules, batch_shapes)


def make_train_step(cfg, loss_fn: LossFn, mesh: Mesh, state_shardings: TrainState,
                    batch_shapes: dict, optimizer, schedule, donate: bool = True) -> TrainStep:
    """Jit `update` for this config, mesh and batch layout.

    Args:
      cfg: full config (reads train.grad_accum_steps and mesh.logical_axis_rules).
      loss_fn: (params, batch, rng) -> (loss, metrics); see `stages.loss_fn_for_stage`.
      state_shardings: TrainState of NamedShardings (from `state.sharded_state_factory`).
      batch_shapes: dict of arrays / ShapeDtypeStructs giving the global batch layout.
    """
    rules = shd.rules_from_config(cfg.mesh)
    accum = int(cfg.train.grad_accum_steps)
    in_batch = batch_shardings(batch_shapes, mesh, rules)
    micro = None
    if accum > 1:
        micro_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            (accum, x.shape[0] // accum) + tuple(x.shape[1:]), x.dtype), batch_shapes)
        micro = batch_shardings(micro_shapes, mesh, rules, leading=1)
    replicated = NamedSharding(mesh, PartitionSpec())

    def step(state, batch):
        return update(state, batch, loss_fn, optimizer, schedule, accum,
                      grad_shardings=state_shardings.params, micro_shardings=micro)

    jitted = jax.jit(step, in_shardings=(state_shardings, in_batch),
                     out_shardings=(state_shardings, replicated),
                     donate_argnums=(0,) if donate else ())
    return TrainStep(jitted, mesh, rules)
