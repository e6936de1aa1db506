"""Part-batch calls side by side (`rl.parallel_calls`).

On a CPU backend a program over a small batch keeps the cores only partly busy: XLA:CPU
runs each op of it on few threads. Two programs over half the batch each, started from two
host threads, keep both cores of this 2-core host busy: a sampler call of 16 prompts took
76-80 ms as one program and 58-59 ms as two of 8 rows side by side, the rule scorer 144-161
against 127-129 ms (BUILD_NOTES, session 15). A row's result does not depend on the other
rows of its call (the sampler keys each row's draws by its row id), so the parts give what
the whole batch gives. An accelerator runs one program at a time at full width, and several
processes must launch their programs in the same order, so there it is one call.
"""
from __future__ import annotations

import concurrent.futures
import functools
from typing import Callable, Sequence, TypeVar

import jax

from sparrow_jax.config import ConfigError

T = TypeVar("T")
AUTO = 0
CPU_PARTS = 2  # measured on a 2-core host: 4 parts of 4 rows were slower than 2 of 8


def _auto(mesh=None) -> int:
    one_device = mesh is None or mesh.devices.size == 1
    alone = jax.default_backend() == "cpu" and jax.process_count() == 1 and one_device
    return CPU_PARTS if alone else 1


def _asked(cfg) -> int:
    parts = int(cfg.rl.parallel_calls)
    if parts > 1 and jax.process_count() > 1:
        raise ConfigError(f"rl.parallel_calls={parts} needs one process (this run has "
                          f"{jax.process_count()}): set it to 1 or 0 (auto)")
    return parts


def parallel_calls(cfg, mesh=None) -> int:
    """`rl.parallel_calls` resolved for an RL run: 0 (auto) is CPU_PARTS on a CPU backend with
    one process and one device (when the batch splits into 2 x CPU_PARTS parts and the update
    takes its batch whole, `train.grad_accum_steps` 1), else 1. The parts are also the
    update's length groups (`train.part_step`).

    Raises ConfigError naming the key if more than one part is asked for with several
    processes (their collectives need one program at a time, in the same order everywhere),
    with gradient accumulation, or for a batch that does not split into 2 x parts rows (the
    sampler's calls of the live rows are half a part wide)."""
    parts = _asked(cfg)
    batch, accum = int(cfg.train.batch_size), int(cfg.train.grad_accum_steps)
    if parts == AUTO:
        auto = _auto(mesh)
        return auto if batch % (2 * auto) == 0 and accum == 1 else 1
    if parts > 1 and batch % (2 * parts):
        raise ConfigError(f"rl.parallel_calls={parts}: train.batch_size={batch} must be a "
                          f"multiple of {2 * parts} (parts of whole rows, and live-row calls "
                          f"half a part wide)")
    if parts > 1 and accum > 1:
        raise ConfigError(f"rl.parallel_calls={parts} needs train.grad_accum_steps=1, got "
                          f"{accum}: the update takes each part's gradient whole")
    return parts


@functools.cache
def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sparrow-part")


def run(calls: Sequence[Callable[[], T]], parallel: int) -> list[T]:
    """Each call's result, in order; `parallel` calls at a time on host threads (1: one after
    another on this thread). A call should block until its result is ready (e.g. end in
    `jax.device_get`), or its program still runs after its thread returns. An exception in a
    call is raised here."""
    if parallel <= 1 or len(calls) <= 1:
        return [call() for call in calls]
    return list(_pool(parallel).map(lambda call: call(), calls))


def sampling_parallel_calls(cfg) -> int:
    """`rl.parallel_calls` for sampling outside training (`sparrow eval`, `chat`, the rating
    app: one process, unsharded params): auto as for an RL run on one device, or as set. A
    batch whose rows do not split into parts is sampled in one call (`rl.rollout`)."""
    parts = _asked(cfg)
    return _auto() if parts == AUTO else parts
