"""The update step for a batch that comes in parts of rows, each part at its own width.

    steps = make_part_steps(cfg, loss_fn, combine, mesh, state_shardings, optimizer, schedule,
                            parts=2, part_shapes=shapes)
    results = tuple(steps.gradients(state, part) for part in part_batches)  # a program a width
    state, metrics = steps.apply(state, results)                           # one program

The RL trainer sorts a step's rows by length and cuts them into parts (`rl.parallel_calls`):
a part of short dialogues then runs at a narrow width instead of the longest row's. The loss
must be additive over parts: each part's loss and metrics are its share of the whole batch's
(the RL loss divides by the whole batch's counts, `stages.rl_loss_denominators`), so their
sums are the whole batch's, as is the sum of the parts' gradients; `combine` turns the summed
metrics into the step's (for A2C, the explained variance from summed means). The optimizer
update is `step.apply_gradients`, the same as the one-program step's.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sparrow_jax import sharding as shd
from sparrow_jax.train.state import TrainState
from sparrow_jax.train.step import (LossFn, TrainStep, apply_gradients, batch_shardings,
                                   loss_and_grads)

# Keys of a part batch that are not per row: replicated, not split by the 'batch' rule.
WHOLE_BATCH_KEYS = ("loss_denominators_3",)


def part_gradients(state: TrainState, batch: dict, loss_fn: LossFn):
    """(loss, metrics, grads) of one part (pure): the step's rng as `step.update` uses it."""
    _, step_rng = jax.random.split(state.rng)
    return loss_and_grads(loss_fn, state.params, state.frozen, batch, step_rng)


def apply_part_gradients(state: TrainState, results: tuple, combine: Callable[[dict], dict],
                         optimizer, schedule):
    """The optimizer update from every part's (loss, metrics, grads), summed in part order."""
    loss, metrics, grads = results[0]
    for part_loss, part_metrics, part_grads in results[1:]:
        loss = loss + part_loss
        metrics = jax.tree.map(lambda a, b: a + b, metrics, part_metrics)
        grads = jax.tree.map(lambda a, b: a + b, grads, part_grads)
    return apply_gradients(state, loss, combine(metrics), grads, optimizer, schedule)


def part_batch_shardings(part_shapes: dict, mesh: Mesh, rules) -> dict:
    """Per-row leaves split by the 'batch' rule (`step.batch_shardings`), WHOLE_BATCH_KEYS
    replicated."""
    rows = {k: v for k, v in part_shapes.items() if k not in WHOLE_BATCH_KEYS}
    whole = {k: NamedSharding(mesh, PartitionSpec()) for k in part_shapes if k in WHOLE_BATCH_KEYS}
    return {**batch_shardings(rows, mesh, rules), **whole}


class PartSteps(NamedTuple):
    """`gradients(state, part_batch)` (one compile per part shape) and `apply(state, results)`
    (the state donated), each a `step.TrainStep`: traced under the mesh's logical-axis rules,
    `.lower(...)` for ahead-of-time compilation."""
    gradients: TrainStep
    apply: TrainStep


def make_part_steps(cfg, loss_fn: LossFn, combine: Callable[[dict], dict], mesh: Mesh,
                    state_shardings: TrainState, optimizer, schedule, parts: int,
                    part_shapes: dict[str, Any]) -> PartSteps:
    """Jit `part_gradients` and `apply_part_gradients` for `parts` parts whose batches are laid
    out like `part_shapes` (any width: the 'batch' rule splits rows only). Gradient
    accumulation (`train.grad_accum_steps` > 1) is not supported here: the caller runs the
    one-program step then."""
    if int(cfg.train.grad_accum_steps) != 1:
        raise ValueError("part steps take train.grad_accum_steps=1, got "
                         f"{cfg.train.grad_accum_steps}")
    rules = shd.rules_from_config(cfg.mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    result = (replicated, replicated, state_shardings.params)
    gradients = jax.jit(lambda state, batch: part_gradients(state, batch, loss_fn),
                        in_shardings=(state_shardings, part_batch_shardings(part_shapes, mesh,
                                                                            rules)),
                        out_shardings=result)
    apply = jax.jit(lambda state, results: apply_part_gradients(state, results, combine,
                                                                optimizer, schedule),
                    in_shardings=(state_shardings, (result,) * parts),
                    out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    return PartSteps(TrainStep(gradients, mesh, rules), TrainStep(apply, mesh, rules))
