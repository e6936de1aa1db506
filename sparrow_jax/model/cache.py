"""The KV cache: its layout, creation, prefix sharing and slot writes.

A cache is a plain pytree:
  {'index':     int32 []          next slot to fill (the same for every row),
   'positions': int32 [B, S]      position of the token in each slot,
   'valid':     bool  [B, S]      slot holds a real token (False = empty or padding),
   'layers':    {stack: {'k': [layers, G, B, S, K], 'v': [layers, G, B, S, K],
                         'last_k': [layers, B, G, K] (model.smeared_keys only)}}}
(G = the key/value heads: model.n_kv_heads, or n_heads when it is 0)
when the layers are scanned (model.scan_layers). When they are looped, a stack is a
tuple of per-layer caches {'k': [G, B, S, K], 'v': ..., 'last_k': [B, G, K]}: a layer
then reads its own buffer, where slicing layer i out of a stacked cache would copy
it at every call (on XLA:CPU, half of a decode step at the tiny_cpu shape).
with one stack for the trunk (absent when it has no layers) and one per top
(`policy`, `teacher`, `pref_rm`, `rule_rm`). Keys/values are in the compute
dtype; keys are stored after rotary rotation and, with smeared keys, smeared
(each key mixed with its token's previous one when it is written); `last_k` is
each row's newest token's key before smearing, which the next token's smearing
reads. Slots are shared by all stacks, so every call that writes the cache must
run every stack in it.

Heads lead and slots follow the rows so that a call reads the cache in place:
attention is a matmul batched over (head, row) with the slots as its free axis,
the layout `layers.attend` computes in, and a call writes only its own slots
(no per-step copy or transpose of the cache).
"""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sparrow_jax.model.spec import ModelSpec

# Role -> the top whose layers it runs on (value reads the policy top).
TOP_OF_ROLE = {"policy": "policy", "value": "policy", "teacher": "teacher",
               "pref_rm": "pref_rm", "rule_rm": "rule_rm"}
TOPS = ("policy", "teacher", "pref_rm", "rule_rm")


def tops_for(roles: Iterable[str]) -> tuple[str, ...]:
    """The tops (in canonical order) that must run to produce `roles`."""
    roles = tuple(roles)
    unknown = [r for r in roles if r not in TOP_OF_ROLE]
    if unknown:
        raise ValueError(f"unknown roles {unknown}; known: {sorted(TOP_OF_ROLE)}")
    wanted = {TOP_OF_ROLE[r] for r in roles}
    return tuple(t for t in TOPS if t in wanted)


def _stack_sizes(spec: ModelSpec, tops: tuple[str, ...]) -> dict[str, int]:
    sizes = {"trunk": spec.n_frozen_layers} if spec.n_frozen_layers else {}
    sizes.update({t: spec.n_top_layers for t in tops})
    return sizes


def _stack(spec: ModelSpec, n: int, layer, stacked) -> dict | tuple:
    """One stack's cache from a function of one layer's leaves: `stacked(leaf)` adds the
    layers axis when the layers are scanned; looped layers get a tuple of n per-layer
    caches (`layer()` called once per layer, so no two layers share a buffer)."""
    if spec.scan_layers:
        return {part: stacked(leaf) for part, leaf in layer().items()}
    return tuple(layer() for _ in range(n))


def init_cache(model_cfg, batch: int, cache_len: int, tops: Iterable[str] = ("policy",)):
    """An empty cache of `cache_len` slots for `batch` rows.

    `tops` names roles whose tops get a stack ('value' means the policy top).
    """
    spec = ModelSpec.of(model_cfg)
    slots = (spec.kv_heads, batch, cache_len, spec.head_dim)

    def layer():
        out = {"k": jnp.zeros(slots, spec.dtype), "v": jnp.zeros(slots, spec.dtype)}
        if spec.smeared_keys:
            out["last_k"] = jnp.zeros((batch, spec.kv_heads, spec.head_dim), spec.dtype)
        return out
    layers = {name: _stack(spec, n, layer, lambda a, n=n: jnp.zeros((n,) + a.shape, a.dtype))
              for name, n in _stack_sizes(spec, tops_for(tops)).items()}
    return {
        "index": jnp.zeros((), jnp.int32),
        "positions": jnp.zeros((batch, cache_len), jnp.int32),
        "valid": jnp.zeros((batch, cache_len), bool),
        "layers": layers,
    }


def cache_logical_axes(model_cfg, tops: Iterable[str] = ("policy",)):
    """The cache tree with PartitionSpec leaves of logical axis names."""
    spec = ModelSpec.of(model_cfg)

    def layer():
        kv = P(spec.kv_heads_axis, "batch", "length", "kv")
        out = {"k": kv, "v": kv}
        if spec.smeared_keys:
            out["last_k"] = P("batch", spec.kv_heads_axis, "kv")
        return out
    return {
        "index": P(),
        "positions": P("batch", "length"),
        "valid": P("batch", "length"),
        "layers": {name: _stack(spec, n, layer, lambda axes: P("layers", *axes))
                   for name, n in _stack_sizes(spec, tops_for(tops)).items()},
    }


def cache_tops(cache) -> tuple[str, ...]:
    """The tops that have a stack in `cache`."""
    return tuple(t for t in TOPS if t in cache["layers"])


def broadcast_cache(cache, n: int):
    """Repeat every row n times (B -> B * n): share a prefilled prefix among n continuations."""
    if n == 1:
        return cache
    return {
        "index": cache["index"],
        "positions": jnp.repeat(cache["positions"], n, axis=0),
        "valid": jnp.repeat(cache["valid"], n, axis=0),
        # Every layer leaf ends in [B, S, K] ('k', 'v') or [B, G, K] ('last_k'), after a
        # leading layers axis when the layers are scanned.
        "layers": jax.tree.map(lambda a: jnp.repeat(a, n, axis=a.ndim - 3), cache["layers"]),
    }


def write_slots(cache_BxS: jax.Array, new_BxT: jax.Array, index: jax.Array) -> jax.Array:
    """Write new_BxT into cache_BxS at slots [index, index + T)."""
    return jax.lax.dynamic_update_slice(cache_BxS, new_BxT.astype(cache_BxS.dtype), (0, index))


def write_kv(stack_kv, new, index: jax.Array):
    """A stack after a call: its keys/values `new['k']`, `new['v']` ([layers, G, B, T, K], or
    one layer's [G, B, T, K]) written at slots [index, index + T), and `new['last_k']`
    (smeared keys) replacing the old.

    A looped stack (a tuple) is returned as `new`: each looped layer writes its own cache
    before it reads it (`layers.Attention`), so its call already gives the written caches."""
    if isinstance(stack_kv, tuple):
        return new
    k = stack_kv["k"]
    start = (0,) * (k.ndim - 2) + (index, 0)
    out = {name: jax.lax.dynamic_update_slice(stack_kv[name], new[name].astype(k.dtype), start)
           for name in ("k", "v")}
    if "last_k" in stack_kv:
        out["last_k"] = new["last_k"].astype(stack_kv["last_k"].dtype)
    return out
