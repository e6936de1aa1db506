"""The Sparrow model: Chinchilla-style decoder, hydra of role heads, KV cache.

Public API (pure functions over explicit, unboxed param pytrees); see
docs/interfaces.md and `hydra`'s docstring for the param tree.
"""
from sparrow_jax.model.cache import (broadcast_cache, cache_logical_axes, init_cache,
                                     tops_for)
from sparrow_jax.model.hydra import (count_params, extend, forward, head_kind, init_params,
                                     lm_head_tops, param_logical_axes)
from sparrow_jax.model.spec import ModelSpec

__all__ = ["init_params", "param_logical_axes", "forward", "extend", "count_params",
           "init_cache", "broadcast_cache", "cache_logical_axes", "tops_for", "head_kind",
           "lm_head_tops",
           "ModelSpec"]
