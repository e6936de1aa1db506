"""The RL update at every batch width, whole or in length groups.

    update = compile_updates(cfg, mesh, setup, widths, state, parts, elo_mean=m, elo_std=s)
    arrays, part_widths = length_groups(arrays, parts, widths)   # rows sorted by length
    state, metrics = update(state, part_batches(batch, trunks, part_widths, mesh, shardings))

With one part (accelerators, several processes) a step is the one-program update at the
batch's width (`train.step`); with P = `rl.parallel_calls` > 1 parts (a CPU backend, one
process) the step's rows are sorted by length and cut into P parts, part p as wide as the
narrowest `rl.length_buckets` width holding its rows: a gradient program per part and one
optimizer update (`train.part_step`), the one-program update's result up to float rounding.
Every program compiles before the first step.
"""
from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sparrow_jax import distributed
from sparrow_jax import sharding as shd
from sparrow_jax.model.spec import ModelSpec
from sparrow_jax.rl.lengths import bucket_for
from sparrow_jax.train import stages
from sparrow_jax.train.part_step import part_batch_shardings
from sparrow_jax.train.step import batch_shardings

log = logging.getLogger(__name__)


def compile_updates(cfg, mesh, setup, widths, state, parts: int, **loss_kwargs):
    """`update(state, part_batches) -> (state, metrics)`, compiled ahead of time at every
    batch width (`rl.length_buckets`) on the abstract state and batch, so no step of the run
    compiles. `part_batches`: [(width, global batch)] for the `parts` parts of the step's rows;
    one part runs the one-program step (`step.update`), several run a gradient program per
    part at its width and one apply (`train.part_step`; each part's batch carries the whole
    batch's `loss_denominators_3`).

    On XLA:CPU a program's first run also costs about as much as a few runs (0.23 s at the
    tiny_cpu shape, BUILD_NOTES session 14), so there each program runs once here, on a copy
    of `state` and an all-zero batch, both dropped."""
    rules = shd.rules_from_config(cfg.mesh)
    trunk = (cfg.model.d_model, ModelSpec.of(cfg.model).dtype)
    start = time.perf_counter()
    warm = jax.default_backend() == "cpu"

    def abstract_batch(width):  # one part's: the whole batch's when parts == 1
        shapes = stages.batch_shapes("rl", cfg.train.batch_size // parts, width, trunk=trunk)
        if parts == 1:
            return shd.abstract_with_shardings(shapes, batch_shardings(shapes, mesh, rules))
        shapes = stages.rl_part_shapes(shapes)
        return shd.abstract_with_shardings(shapes, part_batch_shardings(shapes, mesh, rules))

    def zeros_like(tree):
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype, device=s.sharding), tree)

    if parts == 1:
        step, steps = setup.step_with(cfg, mesh, **loss_kwargs), {}
        for width in widths:
            batch = abstract_batch(width)
            steps[width] = step.lower(setup.abstract_state, batch).compile()
            if warm:
                jax.block_until_ready(steps[width](jax.tree.map(jnp.copy, state),
                                                   zeros_like(batch)))

        def update(state, part_batches):
            (width, batch), = part_batches
            return steps[width](state, batch)
    else:
        part_steps, gradients = setup.part_steps_with(cfg, mesh, parts, **loss_kwargs), {}
        for width in widths:
            batch = abstract_batch(width)
            gradients[width] = part_steps.gradients.lower(setup.abstract_state, batch).compile()
            if warm:
                results = jax.block_until_ready(gradients[width](state, zeros_like(batch)))
        result = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              gradients[widths[0]].out_info)
        apply = part_steps.apply.lower(setup.abstract_state, (result,) * parts).compile()
        if warm:
            jax.block_until_ready(apply(jax.tree.map(jnp.copy, state), (results,) * parts))

        def update(state, part_batches):
            return apply(state, tuple(gradients[width](state, batch)
                                      for width, batch in part_batches))
    log.info("rl: the update compiled at batch widths %s%s in %.1f s", ", ".join(map(str, widths)),
             f" ({parts} length-grouped parts)" if parts > 1 else "", time.perf_counter() - start)
    return update


def length_groups(arrays: dict, parts: int, widths: tuple[int, ...]
                  ) -> tuple[dict, tuple[int, ...]]:
    """(`arrays` with rows sorted by length, shortest first, the width of each of the `parts`
    parts those rows cut into: the narrowest of `widths` that holds its longest row). One
    part keeps the rows' order and the batch's width."""
    if parts == 1:
        return arrays, (arrays["tokens_BxL"].shape[1],)
    lengths_B = arrays["valid_BxL"].sum(axis=1)
    order = np.argsort(lengths_B, kind="stable")
    rows = len(order) // parts
    part_widths = tuple(bucket_for(int(lengths_B[order[(p + 1) * rows - 1]]), widths)
                        for p in range(parts))
    return {k: v[order] for k, v in arrays.items()}, part_widths


def part_batches(batch: dict, trunks: list, part_widths: tuple[int, ...], mesh,
                 row_shardings: dict) -> list[tuple[int, dict]]:
    """[(width, global batch)] of the update's parts: `batch`'s rows (this process's, host
    arrays) cut into len(part_widths) parts, part p to its width, with its trunk output and,
    for several parts (one process: `rl.parallel.parallel_calls`), the whole batch's
    `loss_denominators_3`. `row_shardings`: the update's batch shardings by key."""
    rows = len(batch["tokens_BxL"]) // len(part_widths)
    whole = {} if len(part_widths) == 1 else {
        "loss_denominators_3": stages.rl_loss_denominators(batch)}
    shardings = {**{k: row_shardings[k] for k in batch},
                 **{k: NamedSharding(mesh, PartitionSpec()) for k in whole}}
    out = []
    for p, width in enumerate(part_widths):
        part = {k: v[p * rows:(p + 1) * rows, :width] if v.ndim > 1 else v[p * rows:(p + 1) * rows]
                for k, v in batch.items()}
        out.append((width, {**distributed.host_local_to_global({**part, **whole}, mesh, shardings),
                            "trunk_BxLxD": trunks[p]}))
    return out
