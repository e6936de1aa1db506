"""Multi-host start-up and host-local <-> global batch helpers.

The one rule for host <-> device traffic in a run of several processes: a process hands
JAX only its own rows of a batch (`host_local_to_global`) and reads back only its own rows
(`host_rows`) or a replicated value; what every process must see whole is gathered with
`allgather_rows` / `allgather_objects`. Nothing fetches a global array that spans other
processes' devices (jax refuses, and on a pod it would copy the world to one host).

`initialize(cfg.distributed)` must run before anything touches a JAX device.
Modes:
  auto      jax.distributed.initialize() with no arguments when on a Cloud TPU VM
            (it discovers the pod from TPU metadata); nothing on a plain host.
  explicit  coordinator / num_processes / process_id from the config, e.g. several
            processes on one machine over 127.0.0.1.
  off       never initialise.
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

# Set by the Cloud TPU VM runtime; any one of them means we are on a TPU host.
TPU_VM_ENV_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "CLOUD_TPU_TASK_ID",
                   "TPU_ACCELERATOR_TYPE", "TPU_HOSTNAME_OVERRIDE")


def on_tpu_vm(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment looks like a Cloud TPU VM."""
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in TPU_VM_ENV_VARS)


def initialize(dist_cfg, environ: Mapping[str, str] | None = None) -> bool:
    """Start multi-process JAX per `dist_cfg`; returns True if it initialised.

    Safe to call twice: a second call is a no-op.
    """
    mode = dist_cfg.mode
    if mode == "off" or jax.distributed.is_initialized():
        return False
    if mode == "auto":
        if not on_tpu_vm(environ):
            log.info("distributed: auto mode, not a TPU VM; single process")
            return False
        jax.distributed.initialize()
    elif mode == "explicit":
        if not dist_cfg.coordinator:
            raise ValueError("distributed.mode='explicit' needs distributed.coordinator (host:port)")
        jax.distributed.initialize(dist_cfg.coordinator, num_processes=dist_cfg.num_processes,
                                   process_id=dist_cfg.process_id)
    else:
        raise ValueError(f"distributed.mode={mode!r} is not one of auto/explicit/off")
    log.info("distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that writes logs, reports and checkpoints metadata)."""
    return jax.process_index() == 0


def process_batch_slice(global_batch: int, sharding: NamedSharding | None = None,
                        global_shape: tuple[int, ...] | None = None) -> slice:
    """Rows of the global batch this process loads.

    Without a sharding: an even split by process index. With one: the rows its
    addressable devices hold (must be one contiguous range), so loaders and
    `host_local_to_global` agree on which rows are local.
    """
    if sharding is None:
        count, index = jax.process_count(), jax.process_index()
        if global_batch % count:
            raise ValueError(f"global batch {global_batch} not divisible by {count} processes")
        per = global_batch // count
        return slice(index * per, (index + 1) * per)
    shape = global_shape or (global_batch,)
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map(shape).values():
        rows.update(range(*index[0].indices(global_batch)))
    lo, hi = min(rows), max(rows) + 1
    if len(rows) != hi - lo:
        raise ValueError("this process's batch rows are not contiguous under the sharding")
    return slice(lo, hi)


def host_local_to_global(batch_np: Any, mesh: Mesh, sharding: Any = None):
    """Assemble global jax.Arrays from each process's rows of a batch pytree.

    Args:
      batch_np: pytree of numpy arrays, leading dim = this process's rows.
      mesh: the global mesh.
      sharding: a NamedSharding, a mesh PartitionSpec, or a pytree of either matching
        `batch_np`; default shards the leading dim over ('data', 'fsdp').
    """
    if sharding is None:
        sharding = PartitionSpec(("data", "fsdp"))

    def to_named(s):
        return s if isinstance(s, NamedSharding) else NamedSharding(mesh, s)

    def one(x, s):
        return jax.make_array_from_process_local_data(to_named(s), np.asarray(x))

    if isinstance(sharding, (NamedSharding, PartitionSpec)):
        return jax.tree.map(lambda x: one(x, sharding), batch_np)
    return jax.tree.map(one, batch_np, sharding,
                        is_leaf=lambda x: isinstance(x, (NamedSharding, PartitionSpec)))


def row_blocks(sharding: NamedSharding, global_batch: int) -> list[slice]:
    """The distinct row ranges [lo, hi) the devices of `sharding` hold of a batch of
    `global_batch` rows, in order: the batch's shards (one per data-parallel replica group).
    The same for any number of processes over the same mesh shape."""
    shape = (global_batch,) + (1,) * (len(sharding.spec) - 1 if sharding.spec else 0)
    ranges = {index[0].indices(global_batch)[:2]
              for index in sharding.devices_indices_map(shape).values()}
    return [slice(lo, hi) for lo, hi in sorted(ranges)]


def host_rows(x, rows: slice) -> np.ndarray:
    """numpy of rows `rows` (leading dim) of `x`, read from this process's shards only.

    `x` is a jax.Array (sharded or not) or anything numpy converts; its addressable shards
    must cover those rows (true for this process's own rows of a batch-sharded or
    replicated array).
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)[rows]
    lo, hi = rows.start, rows.stop
    out = np.empty((hi - lo,) + x.shape[1:], x.dtype)
    filled = np.zeros(out.shape, bool)
    for shard in x.addressable_shards:
        r_lo, r_hi, _ = shard.index[0].indices(x.shape[0]) if shard.index else (0, 1, 1)
        a, b = max(lo, r_lo), min(hi, r_hi)
        if a >= b:
            continue
        data = np.asarray(shard.data)[a - r_lo:b - r_lo]
        region = (slice(a - lo, b - lo),) + tuple(shard.index[1:])
        out[region], filled[region] = data, True
    if not filled.all():
        raise ValueError(f"rows {lo}:{hi} of an array of shape {x.shape} are not all held by "
                         f"process {jax.process_index()}'s devices")
    return out


def tree_host_rows(tree, rows: slice):
    """`host_rows` on every leaf of a pytree."""
    return jax.tree.map(lambda x: host_rows(x, rows), tree)


def to_host(tree):
    """numpy of a pytree whose leaves are replicated or fully addressable (e.g. a jitted
    step's scalar metrics); a leaf sharded over other processes is gathered."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(one, tree)


def allgather_rows(tree) -> Any:
    """Every process's host numpy rows (same shapes on each), concatenated in process order
    along the leading dim; the same on every process. One process: the input."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def allgather_objects(obj: Any) -> list:
    """[each process's `obj`] in process order, on every process (pickled; our own
    processes only). One process: [obj]."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([data.size], np.int64), tiled=True)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    gathered = multihost_utils.process_allgather(padded, tiled=False)
    return [pickle.loads(gathered[i][:int(n)].tobytes()) for i, n in enumerate(sizes)]


def any_process(flag: bool) -> bool:
    """True if `flag` is True on any process (a decision every process must take alike)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(allgather_rows(np.asarray([bool(flag)])).any())


def call_on_rows(fn: Callable, host_batch: Any, mesh: Mesh, sharding: Any = None,
                 rows: slice | None = None):
    """Run `fn(global_batch)` on a batch every process holds whole (host numpy, same on each):
    each process feeds its own rows, reads back its own rows of the output, and the rows
    are gathered so every process returns the whole output as numpy.

    `fn` returns a pytree whose leaves have the batch as leading dim.
    """
    batch = len(jax.tree.leaves(host_batch)[0])
    rows = rows or process_batch_slice(batch, _leading_sharding(mesh, sharding))
    local = jax.tree.map(lambda x: np.asarray(x)[rows], host_batch)
    out = tree_host_rows(fn(host_local_to_global(local, mesh, sharding)), rows)
    if jax.process_count() == 1:
        return out
    return join_row_blocks(allgather_objects((rows.start, rows.stop, out)), batch)


def join_row_blocks(blocks: Sequence[tuple[int, int, Any]], batch: int):
    """One pytree of `batch` rows from (lo, hi, rows lo:hi) blocks (overlaps must agree)."""
    first = blocks[0][2]
    out = jax.tree.map(lambda x: np.empty((batch,) + x.shape[1:], x.dtype), first)
    seen = np.zeros(batch, bool)
    for lo, hi, part in blocks:
        jax.tree.map(lambda o, p: o.__setitem__(slice(lo, hi), p), out, part)
        seen[lo:hi] = True
    if not seen.all():
        raise ValueError(f"rows {np.flatnonzero(~seen).tolist()} of {batch} came from no process")
    return out


def _leading_sharding(mesh: Mesh, sharding: Any) -> NamedSharding:
    leaf = sharding if isinstance(sharding, (NamedSharding, PartitionSpec)) else None
    if leaf is None and sharding is not None:
        leaf = jax.tree.leaves(sharding, is_leaf=lambda s: isinstance(s, (NamedSharding, PartitionSpec)))[0]
    leaf = leaf if leaf is not None else PartitionSpec(("data", "fsdp"))
    return leaf if isinstance(leaf, NamedSharding) else NamedSharding(mesh, leaf)
