"""Multi-host start-up and host-local <-> global batch helpers.

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
from typing import Any, Mapping

import jax
import numpy as np
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
