"""glibc malloc settings for XLA:CPU, applied by the `sparrow` command before JAX starts.

XLA:CPU allocates each call's temporary buffer (160 MB for the tiny RL update) with
posix_memalign, from its worker threads. glibc serves those threads from per-thread
arenas whose heaps (64 MB at most) cannot hold a block that large, so every call maps
fresh pages and unmaps them afterwards: 40,000 page faults per RL update, and on the
2-core VM of BUILD_NOTES the update took 115-280 ms a call instead of a steady 107 ms.
With one arena, no mmap and no trimming, a freed block serves the next call.

Only for processes that run XLA:CPU: when JAX_PLATFORMS names cpu first, or no
accelerator plugin (libtpu, jax CUDA / ROCm plugins) is installed. The price is that
freed memory stays with the process, and a call that finds no freed block big enough
grows the heap by one block of its temporary (in at most half of 24 calls in
`tests/test_host_memory.py`; the RL benchmark's peak resident size was 1.51 GB with the
settings and 1.61 GB without). SPARROW_MALLOC=system keeps glibc's defaults.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_NEVER_TRIM = 2 ** 31 - 1  # bytes; mallopt takes a C int
_ACCELERATOR_PLUGINS = ("libtpu", "jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm")


def runs_xla_cpu(environ=os.environ) -> bool:
    """Whether JAX will pick its CPU backend here (decided before JAX starts)."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    names = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
    return not any(n.lower().startswith(_ACCELERATOR_PLUGINS) for n in names)


_applied: str | None = None  # what reuse_freed_memory did in this process


def applied() -> str | None:
    """What `reuse_freed_memory` did in this process (None: it was not called), for the
    log of a command that configures logging after it ran (`sparrow train`)."""
    return _applied


def reuse_freed_memory(environ=os.environ) -> str:
    """Apply the module's malloc settings if this process runs XLA:CPU on glibc; call it
    before JAX creates its threads. Returns what was done, for the log (also `applied()`)."""
    global _applied
    _applied = _decide_and_apply(environ)
    return _applied


def _decide_and_apply(environ) -> str:
    if environ.get("SPARROW_MALLOC", "") == "system":
        return "glibc malloc defaults (SPARROW_MALLOC=system)"
    if not sys.platform.startswith("linux") or not runs_xla_cpu(environ):
        return "malloc defaults (not XLA:CPU on Linux)"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return "malloc defaults (no glibc mallopt)"
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER_TRIM))
    if not all(mallopt(param, value) == 1 for param, value in settings):
        return "malloc defaults (mallopt refused)"
    return "glibc malloc: one arena, no mmap, freed memory kept for reuse (XLA:CPU buffers)"
