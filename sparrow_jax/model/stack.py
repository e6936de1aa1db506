"""A stack of decoder blocks with parameters stacked on a leading 'layers' axis.

The stack is run with nn.scan (spec.scan_layers) so compile time does not grow
with depth, or with a Python loop over the same stacked parameters; both use
the same remat policy. Stacks are pure functions over an unboxed param tree
`{'attn': ..., 'attn_norm': ..., 'mlp': ..., 'mlp_norm': ...}` whose leaves
have a leading dimension n_layers.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparrow_jax.model import positions
from sparrow_jax.model.layers import Block, take_rows
from sparrow_jax.model.spec import ModelSpec

# One stack's cache (cache.py): 'k', 'v' [n_layers, G, B, S, K] (+ 'last_k') when scanned,
# a tuple of per-layer {'k', 'v' [G, B, S, K], ...} when looped.
KV = dict[str, jax.Array] | tuple[dict[str, jax.Array], ...]


def _block_class(spec: ModelSpec):
    if spec.remat == "none":
        return Block
    # Inside a scan CSE across iterations is impossible anyway; outside, keep
    # prevent_cse so XLA cannot undo the rematerialisation.
    return nn.remat(Block, policy=spec.remat_policy, prevent_cse=not spec.scan_layers)


class _ScannedBlocks(nn.Module):
    spec: ModelSpec
    n_layers: int

    @nn.compact
    def __call__(self, x_BxTxD, ctx, kv):
        scanned = nn.scan(
            _block_class(self.spec),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, 0),
            length=self.n_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        return scanned(self.spec, name="block")(x_BxTxD, ctx, kv)


def attention_context(spec: ModelSpec, q_pos_BxT, k_pos_BxS, k_valid_BxS,
                      q_slot_T, k_slot_S, q_seg_BxT=None, k_seg_BxS=None,
                      index=None, causal_slots: bool = False,
                      slot_gap_distances: bool = False) -> dict[str, Any]:
    """Everything attention needs that is the same in every layer (see layers.py).

    `causal_slots`: the caller promises q_slot_T == k_slot_S == arange(L) (a forward
    without a cache), so no query attends to a later slot; attention then skips the
    upper triangle block by block (layers.query_blocks). The flag travels as the
    presence of ctx["causal_slots"] (value None: static, no array).
    `slot_gap_distances` (with causal_slots): the caller promises every row's valid tokens
    have consecutive positions in slot order (arange, or a left-padded prompt's), and
    L <= max_len: every pair the mask keeps is then as far apart as its slots, so the
    relative term needs no gather (`layers.relative_scores`); ctx["slot_gap_distances"].
    """
    ctx = {
        "mask_BxTxS": positions.attention_mask(q_slot_T, k_slot_S, q_pos_BxT, k_pos_BxS,
                                               k_valid_BxS, q_seg_BxT, k_seg_BxS),
        "q_pos_BxT": q_pos_BxT,
    }
    if spec.position == "relative":
        ctx["distance_BxTxS"] = positions.relative_distance(q_pos_BxT, k_pos_BxS, spec.max_len)
        ctx["rel_table_MxD"] = positions.sinusoidal_table(spec.max_len, spec.d_model, spec.dtype)
    if spec.smeared_keys:
        ctx["prev_slot_BxS"], ctx["has_prev_BxS"] = positions.previous_token_slot(
            k_slot_S, k_pos_BxS, k_valid_BxS, k_seg_BxS)
    if index is not None:
        ctx["index"] = index
    if causal_slots:
        ctx["causal_slots"] = None
        if slot_gap_distances:
            ctx["slot_gap_distances"] = None
    return ctx


def cached_attention_context(spec: ModelSpec, q_pos_BxT, q_valid_BxT, cache_pos_BxS,
                             cache_valid_BxS, index, empty: bool = False,
                             keep_cache: bool = True,
                             consecutive_positions: bool = False) -> dict[str, Any]:
    """The context of a cached call (`hydra.extend`): T new tokens at slots
    [index, index + T) of a cache whose slots before `index` hold earlier tokens
    (positions and validity as before this call; slots from `index` on are empty).

    Attention reads the cache and the new block separately (`layers.attend_cached`):
      mask_cache_BxTxS, mask_new_BxTxT   bool, as `attention_mask` for each part
      distance_cache_BxTxS, distance_new_BxTxT, rel_table_MxD   (relative)
    or, with looped layers (spec.scan_layers False) whose cache is kept (`keep_cache`), the
    cache after the block is written:
      mask_written_BxTxS, distance_written_BxTxS
      prev_new_BxT, has_prev_new_BxT     (smeared keys) index in the block of each new
                                         token's previous token, -1 = the cache's newest
      q_pos_BxT, new_valid_BxT, index
    `empty`: the caller promises the cache holds nothing yet (a prefill): the new block then
    attends as a plain forward does (`attention_context`, causal blocks), marked "empty_cache";
    `consecutive_positions` is then `attention_context`'s slot_gap_distances promise.
    `keep_cache` False: the caller drops the written cache, so looped layers read the cache
    and the block separately too (writing first would copy a cache shared by every call).
    """
    length = q_pos_BxT.shape[1]
    if empty:
        slots_T = jnp.arange(length, dtype=jnp.int32)
        ctx = attention_context(spec, q_pos_BxT, q_pos_BxT, q_valid_BxT, slots_T, slots_T,
                                causal_slots=True,
                                slot_gap_distances=consecutive_positions and length <= spec.max_len)
        ctx.update(new_valid_BxT=q_valid_BxT, index=index, empty_cache=None)
        if spec.smeared_keys:
            ctx["prev_new_BxT"], ctx["has_prev_new_BxT"] = ctx["prev_slot_BxS"], ctx["has_prev_BxS"]
        return ctx
    q_slot_T = index + jnp.arange(length, dtype=jnp.int32)
    k_slot_S = jnp.arange(cache_pos_BxS.shape[1], dtype=jnp.int32)
    ctx = {
        "mask_cache_BxTxS": positions.attention_mask(q_slot_T, k_slot_S, q_pos_BxT,
                                                     cache_pos_BxS, cache_valid_BxS),
        "mask_new_BxTxT": positions.attention_mask(q_slot_T, q_slot_T, q_pos_BxT, q_pos_BxT,
                                                   q_valid_BxT),
        "q_pos_BxT": q_pos_BxT,
        "new_valid_BxT": q_valid_BxT,
        "index": index,
    }
    if spec.position == "relative":
        ctx["distance_cache_BxTxS"] = positions.relative_distance(q_pos_BxT, cache_pos_BxS,
                                                                  spec.max_len)
        ctx["distance_new_BxTxT"] = positions.relative_distance(q_pos_BxT, q_pos_BxT,
                                                                spec.max_len)
        ctx["rel_table_MxD"] = positions.sinusoidal_table(spec.max_len, spec.d_model, spec.dtype)
    if not keep_cache:
        ctx["cache_read_only"] = None  # looped layers return their new keys unwritten
    elif not spec.scan_layers:
        # Looped layers read their cache after writing the new block into it (layers.py):
        # one mask (and distance) over all S slots, the block's own at [index, index + T).
        for part in ("mask", "distance"):
            if f"{part}_new_BxTxT" in ctx:
                ctx[f"{part}_written_BxTxS"] = jax.lax.dynamic_update_slice(
                    ctx.pop(f"{part}_cache_BxTxS"), ctx.pop(f"{part}_new_BxTxT"), (0, 0, index))
    if spec.smeared_keys:
        # The block after the cache's S slots (its valid ones all lie before `index`): the
        # cache need not have room for the block (`keep_cache` False).
        n_slots = cache_pos_BxS.shape[1]
        prev_BxN, has_prev_BxN = positions.previous_token_slot(
            jnp.arange(n_slots + length, dtype=jnp.int32),
            jnp.concatenate([cache_pos_BxS, q_pos_BxT], axis=1),
            jnp.concatenate([cache_valid_BxS, q_valid_BxT], axis=1))
        prev_BxT = prev_BxN[:, n_slots:]
        # The nearest earlier valid slot is in the block, or else the cache's newest token.
        ctx["prev_new_BxT"] = jnp.where(prev_BxT >= n_slots, prev_BxT - n_slots, -1)
        ctx["has_prev_new_BxT"] = has_prev_BxN[:, n_slots:]
    return ctx


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_stack(spec: ModelSpec, n_layers: int, rng: jax.Array):
    """Boxed (nn.Partitioned) params of an n_layers stack; leading axis 'layers'.

    Jitted so that the tops, which all have the same shape, compile once.
    """
    tokens = jnp.zeros((1, 1), jnp.int32)
    ctx = attention_context(spec, tokens, tokens, tokens == 0, jnp.zeros(1, jnp.int32),
                            jnp.zeros(1, jnp.int32))
    x = jnp.zeros((1, 1, spec.d_model), spec.dtype)
    variables = _ScannedBlocks(spec, n_layers).init(rng, x, ctx, None)
    return variables["params"]["block"]


def split_layers(params) -> tuple:
    """A stack's params as one tree per layer (leaves without the layers axis), for looped
    layers that run many times on the same weights (a decode loop): sliced once before the
    loop, not in every step."""
    n_layers = jax.tree.leaves(params)[0].shape[0]
    return tuple(jax.tree.map(lambda a, i=i: a[i], params) for i in range(n_layers))


def apply_stack(params, spec: ModelSpec, x_BxTxD: jax.Array, ctx: dict[str, Any],
                kv: KV | None = None, query_BxQ=None):
    """Run every layer of the stack.

    Args:
      params: unboxed stack params, leaves [n_layers, ...]; looped layers also take a
        tuple of per-layer trees (`split_layers`).
      x_BxTxD: input activations (compute dtype).
      ctx: attention context from `attention_context`, or `cached_attention_context`
        with a cache.
      kv: optional cache of this stack, laid out as spec.scan_layers says (`KV`).
      query_BxQ: int slots; if given, x comes back at these slots only ([B, Q, D]). Looped,
        the last layer computes only their outputs (every token still gives its key and
        value); scanned, every layer runs on every token and the slots are read after.
    Returns:
      (x_BxTxD, new_kv): new_kv is None without a cache, else this call's keys and
      values in the cache's layout ('k', 'v' [n_layers, G, B, T, K], and 'last_k' with
      smeared keys; per layer in a tuple when looped), to be written at the fill index
      (`cache.write_kv`).
    """
    if isinstance(params, tuple) and spec.scan_layers:
        raise ValueError("scanned layers take stacked params, not split_layers' tuple")
    if kv is not None and isinstance(kv, tuple) == spec.scan_layers:
        raise ValueError(f"the cache is laid out for model.scan_layers={not spec.scan_layers}; "
                         "make it with init_cache and the same model config")
    if spec.scan_layers:
        # Scanned, the last layer runs on every token and the slots are read after it:
        # splitting it off the scan would copy the stacked weights and cache (at the 70B
        # pod shape, +12 GiB per chip for the rule scorer).
        n_layers = jax.tree.leaves(params)[0].shape[0]
        x_BxTxD, new_kv = _ScannedBlocks(spec, n_layers).apply({"params": {"block": params}},
                                                               x_BxTxD, ctx, kv)
        return (x_BxTxD if query_BxQ is None else take_rows(x_BxTxD, query_BxQ)), new_kv
    block = _block_class(spec)(spec)
    per_layer = params if isinstance(params, tuple) else split_layers(params)
    n_layers = len(per_layer)
    new_kvs = []
    for i, layer_params in enumerate(per_layer):
        x_BxTxD, new_kv = block.apply({"params": layer_params}, x_BxTxD, ctx,
                                      None if kv is None else kv[i],
                                      query_BxQ if i == n_layers - 1 else None)
        new_kvs.append(new_kv)
    return x_BxTxD, None if kv is None else tuple(new_kvs)

