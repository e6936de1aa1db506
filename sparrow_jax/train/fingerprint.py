"""Fingerprints of param trees, computed where the arrays live.

    fingerprint(tree) -> "3f9c...": 32 hex digits; equal trees (same structure, shapes,
    dtypes and bits) give equal fingerprints; a change of any one element gives another.

Two workdirs' trunks are compared by fingerprint, never by copying the weights to a host
(224 GB per tree at 70B). Each leaf is reduced on its own devices by a jitted sum of
hashed bits:

    lane_k(x) = sum over elements i of  mix(bits(x[i]) ^ h_k(i))   (mod 2^32), k < 4

where bits() is the element's bit pattern widened to uint32, h_k a hash of the element's
multi-dimensional index (seeded per lane) and mix a bijection on uint32 (murmur3's fmix32).
A change of one element changes exactly one term of each sum, and since mix is a bijection
that term cannot stay the same: every lane changes, whatever the values. Swaps of elements
change it unless their index hashes collide in all four lanes. The sum is exact integer
arithmetic, so the result does not depend on how the leaf is sharded or reduced.

The reduction's output (uint32[4]) is replicated over the leaf's mesh, so each process reads
it from its own devices: nothing spanning other processes is fetched. Every process of a
run must call `fingerprint` on the same tree (it runs jitted computations over global arrays).
"""
from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

LANES = 4
_LANE_SEEDS = (0x9E3779B9, 0x7F4A7C15, 0x85EBCA77, 0xC2B2AE3D)
_DIM_MULTIPLIER = 0x27D4EB2F


def _mix(x: jax.Array) -> jax.Array:
    """murmur3 fmix32: a bijection on uint32 whose every output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _bits(x: jax.Array) -> jax.Array:
    """The elements' bit patterns as uint32, same shape (8-byte types gain a trailing dim of 2)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = jnp.dtype(x.dtype).itemsize
    if width >= 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    narrow = {1: jnp.uint8, 2: jnp.uint16}[width]
    return jax.lax.bitcast_convert_type(x, narrow).astype(jnp.uint32)


def _lane_sums(x: jax.Array) -> jax.Array:
    """uint32[LANES]: the leaf's per-lane sums (module docstring)."""
    bits = _bits(x)
    sums = []
    for seed in _LANE_SEEDS:
        index_hash = jnp.full(bits.shape, seed, jnp.uint32)
        for dim in range(bits.ndim):
            position = jax.lax.broadcasted_iota(jnp.uint32, bits.shape, dim)
            index_hash = _mix(index_hash * jnp.uint32(_DIM_MULTIPLIER) ^ position)
        sums.append(jnp.sum(_mix(bits ^ index_hash), dtype=jnp.uint32))
    return jnp.stack(sums)


@functools.lru_cache(maxsize=None)
def _reducer(out_sharding):
    return jax.jit(_lane_sums, out_shardings=out_sharding)


def leaf_lanes(x) -> np.ndarray:
    """uint32[LANES] of one array (jax or numpy), reduced on the devices that hold it."""
    sharding = getattr(x, "sharding", None)
    out = NamedSharding(sharding.mesh, PartitionSpec()) if isinstance(sharding, NamedSharding) else None
    lanes = _reducer(out)(x)
    # Replicated: every process's first addressable shard holds the whole (tiny) result.
    return np.asarray(lanes.addressable_data(0))


def fingerprint(tree) -> str:
    """32 hex digits over the tree's paths, shapes, dtypes and every leaf's bits (module docstring)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        header = f"{jax.tree_util.keystr(path)}|{tuple(np.shape(leaf))}|{np.dtype(leaf.dtype).name}|"
        digest.update(header.encode())
        digest.update(leaf_lanes(leaf).astype("<u4").tobytes())
    return digest.hexdigest()[:32]
