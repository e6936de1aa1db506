"""The decoder block: pre-norm attention and MLP, Chinchilla-style (no biases).

Every parameter carries logical axis names (nn.with_logical_partitioning);
key activations carry logical constraints, which are no-ops outside a
logical-axis-rules context.

`ctx` is the per-call attention context shared by every layer: for a plain
forward (`stack.attention_context`)
  mask_BxTxS       bool, which keys each query may attend to
  q_pos_BxT        int32 positions of the queries (rotary)
  distance_BxTxS   int32 query_pos - key_pos, clipped (relative)
  rel_table_MxD    sinusoidal encodings of distances [0, max_len) (relative)
  prev_slot_BxS, has_prev_BxS   each token's previous one (smeared keys);
for a call on a KV cache, `stack.cached_attention_context` (the same per part:
the cache's slots and the new block).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparrow_jax.model import positions
from sparrow_jax.model.cache import write_kv
from sparrow_jax.model.spec import ModelSpec

# Large negative score for masked pairs; finite, so an all-masked row stays finite.
_MASKED_SCORE = -1e30


# Remat policies that save dot outputs; they cannot see into a custom_vjp.
_DOT_SAVING_REMAT = ("dots", "dots_no_batch")


def project(equation: str, x: jax.Array, w: jax.Array, spec: ModelSpec) -> jax.Array:
    """`jnp.einsum(equation, x, w)` for a weight projection (w has no batch axes).

    Same arithmetic as the plain einsum: products accumulated in float32, rounded
    to the input dtype. In bf16 the einsum asks for float32 output and rounds
    after, because XLA:CPU runs a bf16 x bf16 -> bf16 dot as a float32 matmul on
    upcast inputs, at about half the speed of its bf16 x bf16 -> float32 kernel;
    the VJP is written the same way so the backward matmuls keep bf16 inputs.
    (Where XLA kept excess precision across that rounding, bf16 results move at
    the bf16 rounding level.) float32 takes the same path (forward bit for bit the
    plain einsum) for its VJP: autodiff's transposes each gradient dot and XLA:CPU
    lays the cotangent out transposed for the weight gradient, a slow strided copy
    (a D 128 -> F 512 projection's forward+backward: 8.2 -> 3.2 ms). Remat policies
    that save dots take the plain einsum (they cannot see into a custom_vjp). Only
    for projections: some batched bf16 x bf16 -> float32 dots (attention scores)
    fail to run on XLA:CPU (jaxlib 0.10).

    With `spec.projection_dtype` set (forward-only calls: `ModelSpec.with_projection_dtype`)
    x and w are rounded to it and the products accumulated in x's dtype (bfloat16 inputs,
    float32 accumulation and output: the f32 model's rollouts at XLA:CPU's bf16 matmul
    speed). Not differentiable: its gradient would need batched mixed dots that XLA:CPU
    cannot run.
    """
    narrow = spec.narrow_projection_dtype
    if narrow is not None and narrow != x.dtype:
        return jnp.einsum(equation, x.astype(narrow), w.astype(narrow),
                          preferred_element_type=x.dtype)
    if x.dtype != w.dtype or spec.remat in _DOT_SAVING_REMAT:
        return jnp.einsum(equation, x, w)
    return _f32_accumulated_einsum(equation, x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _f32_accumulated_einsum(equation: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(equation, a, b, preferred_element_type=jnp.float32).astype(a.dtype)


def _f32_accumulated_einsum_fwd(equation, a, b):
    return _f32_accumulated_einsum(equation, a, b), (a, b)


def _f32_accumulated_einsum_bwd(equation, residuals, g):
    # Every index of an operand appears in the other operand or the output.
    a, b = residuals
    inputs, out = equation.split("->")
    a_axes, b_axes = inputs.split(",")
    grad_a = _f32_accumulated_einsum(f"{out},{b_axes}->{a_axes}", g, b)
    # The weight gradient contracts the (batch, length) axes, which the CPU
    # matmul wants last in its left operand: put the smaller of the two there
    # (it gets transposed) and transpose the small result instead.
    lhs_axes, lhs, rhs_axes, rhs = ((a_axes, a, out, g) if a.size <= g.size
                                    else (out, g, a_axes, a))
    natural = "".join(c for c in lhs_axes + rhs_axes if c in b_axes)
    grad_b = _f32_accumulated_einsum(f"{lhs_axes},{rhs_axes}->{natural}", lhs, rhs)
    if natural != b_axes:
        # Left alone, XLA folds this transpose into the matmul by swapping its operands,
        # which puts the contracted axes first in the left one: XLA:CPU then runs it as
        # a slow generic dot (the 44M MLP's out-projection gradient: ~35% slower in f32).
        grad_b = jax.lax.optimization_barrier(grad_b)
    return grad_a, jnp.transpose(grad_b, [natural.index(c) for c in b_axes])


_f32_accumulated_einsum.defvjp(_f32_accumulated_einsum_fwd, _f32_accumulated_einsum_bwd)


def logical_param(module: nn.Module, name: str, shape, axes, init):
    """A param of `module` (which has a `spec`) in the param dtype, tagged with logical axes."""
    spec: ModelSpec = module.spec
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, spec.pdtype)


class RMSNorm(nn.Module):
    """x / rms(x) * scale over the last axis, computed in float32 (scale only).

    With `norm_unit_offset` (Gemma) the factor is (1 + scale) and scale starts at 0.
    """
    spec: ModelSpec

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        offset = self.spec.norm_unit_offset
        scale = logical_param(self, "scale", (self.spec.d_model,), ("embed",),
                              nn.initializers.zeros if offset else nn.initializers.ones)
        x = x_BxLxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.spec.norm_eps)
        factor = scale.astype(jnp.float32)
        if offset:
            factor = 1.0 + factor
        return (x * factor).astype(self.spec.dtype)


class Mlp(nn.Module):
    """Dense GELU MLP D -> F -> D, or gated (act(x W_gate) * (x W_up)) W_out with act GELU
    (tanh approximation; 'gated_gelu') or SiLU ('swiglu')."""
    spec: ModelSpec

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        s = self.spec
        init = nn.initializers.normal(s.init_std)
        out_init = nn.initializers.normal(s.init_std / (2 * s.n_layers) ** 0.5)
        x = x_BxLxD.astype(s.dtype)
        if s.mlp in ("gated_gelu", "swiglu"):
            act = jax.nn.gelu if s.mlp == "gated_gelu" else jax.nn.silu
            w_gate = logical_param(self, "wi_gate", (s.d_model, s.d_ff), ("embed", "mlp"), init)
            w_up = logical_param(self, "wi_up", (s.d_model, s.d_ff), ("embed", "mlp"), init)
            h_BxLxF = (act(project("bld,df->blf", x, w_gate.astype(s.dtype), s))
                       * project("bld,df->blf", x, w_up.astype(s.dtype), s))
        else:
            w_in = logical_param(self, "wi", (s.d_model, s.d_ff), ("embed", "mlp"), init)
            h_BxLxF = jax.nn.gelu(project("bld,df->blf", x, w_in.astype(s.dtype), s))
        h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "mlp"))
        w_out = logical_param(self, "wo", (s.d_ff, s.d_model), ("mlp", "embed"), out_init)
        return project("blf,fd->bld", h_BxLxF, w_out.astype(s.dtype), s)


def take_rows(x_BxT, rows_BxQ):
    """x at each row's slots `rows_BxQ` along axis 1: [B, Q, ...] from [B, T, ...]."""
    index = rows_BxQ.reshape(rows_BxQ.shape + (1,) * (x_BxT.ndim - 2))
    return jnp.take_along_axis(x_BxT, index, axis=1)


# ctx entries indexed by query along axis 1 (`query_rows` keeps the asked rows).
_QUERY_AXIS_CTX = ("mask_BxTxS", "distance_BxTxS", "mask_cache_BxTxS", "distance_cache_BxTxS",
                   "mask_new_BxTxT", "distance_new_BxTxT", "mask_written_BxTxS",
                   "distance_written_BxTxS")


def query_rows(ctx: dict[str, Any], query_BxQ) -> dict[str, Any]:
    """The attention context for the queries at slots `query_BxQ` only: the masks and
    distances keep those rows; everything about the keys stays (keys are every token).
    The queries are no longer the key slots in order, so causal blocks are off."""
    out = {k: v for k, v in ctx.items() if k not in ("causal_slots", "slot_gap_distances")}
    for name in _QUERY_AXIS_CTX:
        if name in out:
            out[name] = take_rows(out[name], query_BxQ)
    return out


class Attention(nn.Module):
    """Multi-head attention with Transformer-XL relative positions or rotary.

    Grouped-query (n_kv_heads = G < H): keys and values have G heads, query head h
    reads key/value head h // (H / G) (the Llama / Gemma layout); the cache holds G heads.

    Relative: score_ts = [(q_t + u) . k_s + (q_t + v) . (W_r R_{d(t,s)})] / sqrt(K).
    The position term is computed for every distance d in [0, max_len) and
    gathered by d = query_pos - key_pos, so it works for any explicit positions
    (in particular for queries whose keys sit in a KV cache); where every kept pair is
    as far apart as its slots, it is shifted into place instead (`relative_scores`).
    """
    spec: ModelSpec

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, ctx: dict[str, Any],
                 layer_kv: dict[str, jax.Array] | None = None, query_BxQ=None):
        """Returns (y_BxTxD, new_kv): new_kv is None without a cache, else this call's
        keys and values for the cache ('k', 'v' [G, B, T, K]; keys smeared if the model
        smears them) and, with smeared keys, 'last_k' [B, G, K] (`cache.py`); looped
        layers (spec.scan_layers False) return their cache with those written instead.

        With `layer_kv` (the layer's cache: 'k', 'v' [G, B, S, K], maybe 'last_k') the
        queries attend to the cache's valid slots and to the new block (`attend_cached`,
        or `attend_written` for looped layers).
        `query_BxQ` (int slots of the T): only those tokens query (y is [B, Q, D]); every
        token still gives its key and value.
        """
        s = self.spec
        dt = s.dtype
        init = nn.initializers.normal(s.init_std)
        out_init = nn.initializers.normal(s.init_std / (2 * s.n_layers) ** 0.5)
        qkv_shape, qkv_axes = (s.d_model, s.n_heads, s.head_dim), ("embed", "heads", "kv")
        kv_shape, kv_axes = (s.d_model, s.kv_heads, s.head_dim), ("embed", s.kv_heads_axis, "kv")
        w_q = logical_param(self, "query", qkv_shape, qkv_axes, init)
        w_k = logical_param(self, "key", kv_shape, kv_axes, init)
        w_v = logical_param(self, "value", kv_shape, kv_axes, init)
        w_o = logical_param(self, "out", (s.n_heads, s.head_dim, s.d_model),
                            ("heads", "kv", "embed"), out_init)

        x = x_BxTxD.astype(dt)
        act_axes = ("batch", "length", "heads", "kv")
        kv_act_axes = ("batch", "length", s.kv_heads_axis, "kv")
        q_pos_BxT = ctx["q_pos_BxT"]
        if query_BxQ is not None:
            ctx, q_pos_BxT = query_rows(ctx, query_BxQ), take_rows(q_pos_BxT, query_BxQ)
        x_query = x if query_BxQ is None else take_rows(x, query_BxQ)
        q = nn.with_logical_constraint(project("btd,dhk->bthk", x_query, w_q.astype(dt), s),
                                       act_axes)
        k = nn.with_logical_constraint(project("btd,dhk->bthk", x, w_k.astype(dt), s),
                                       kv_act_axes)
        v = nn.with_logical_constraint(project("btd,dhk->bthk", x, w_v.astype(dt), s),
                                       kv_act_axes)
        if s.position == "rotary":
            scaling = s.rotary_scaling_spec
            q = positions.apply_rotary(q, q_pos_BxT, s.rotary_base, scaling)
            k = positions.apply_rotary(k, ctx["q_pos_BxT"], s.rotary_base, scaling)
        if s.smeared_keys:
            smear_H = logical_param(self, "smear", (s.kv_heads,), (s.kv_heads_axis,),
                                    nn.initializers.zeros)
        if s.position == "relative":
            w_r = logical_param(self, "rel_proj", qkv_shape, qkv_axes, init)
            u = logical_param(self, "u_bias", (s.n_heads, s.head_dim), ("heads", "kv"),
                              nn.initializers.zeros)
            v_bias = logical_param(self, "v_bias", (s.n_heads, s.head_dim), ("heads", "kv"),
                                   nn.initializers.zeros)
            r_MxHxK = project("md,dhk->mhk", ctx["rel_table_MxD"].astype(dt), w_r.astype(dt), s)
            q_content, q_position = q + u.astype(dt), q + v_bias.astype(dt)
            position = (q_position, r_MxHxK)
        else:
            q_content, position = q, None
        scale = s.head_dim ** -0.5

        if layer_kv is None:  # a plain forward: nothing needs the new keys afterwards
            if s.smeared_keys:
                k = smear_keys(k, ctx["prev_slot_BxS"], ctx["has_prev_BxS"], smear_H)
            attended_BxTxHxK = attend(q_content, k, v, ctx, scale, position, s.causal_block)
            new_kv = None
        else:
            plain_k = k
            if s.smeared_keys:
                k_ext = jnp.concatenate([layer_kv["last_k"][:, None].astype(dt), k], axis=1)
                prev_BxT = ctx["prev_new_BxT"] + 1  # index into k_ext (0 = the cache's newest)
                k = smear_keys(k_ext, prev_BxT, ctx["has_prev_new_BxT"], smear_H,
                               keys_from=slice(1, None))
            new_kv = {"k": jnp.transpose(k, (2, 0, 1, 3)), "v": jnp.transpose(v, (2, 0, 1, 3))}
            if s.smeared_keys:
                new_kv["last_k"] = newest_key(plain_k, ctx["new_valid_BxT"], layer_kv["last_k"])
            if not s.scan_layers and "cache_read_only" not in ctx:
                # A looped layer owns its cache buffer (cache.py): it writes the new block
                # first and reads the written cache. Reading the old buffer after the write
                # is scheduled would make XLA copy the whole cache (twice per decode step).
                new_kv = write_kv(layer_kv, new_kv, ctx["index"])
            if "empty_cache" in ctx:  # a prefill: nothing to read in the cache
                attended_BxTxHxK = attend(q_content, k, v, ctx, scale, position, s.causal_block)
            elif "mask_written_BxTxS" in ctx:
                attended_BxTxHxK = attend_written(q_content, new_kv["k"], new_kv["v"], ctx, scale,
                                                  position)
            else:
                attended_BxTxHxK = attend_cached(q_content, layer_kv["k"], layer_kv["v"], k, v,
                                                 ctx, scale, position)
        y_BxTxD = project("bthk,hkd->btd", attended_BxTxHxK, w_o.astype(dt), s)
        return y_BxTxD, new_kv


def smear_keys(k_BxSxHxK: jax.Array, prev_slot_BxS: jax.Array, has_prev_BxS: jax.Array,
               smear_H: jax.Array, keys_from: slice = slice(None)) -> jax.Array:
    """k'_s = w k_s + (1 - w) k_prev(s) with w = sigmoid(smear) per head; k_s alone at a
    sequence's first token. `keys_from`: smear only these slots of k (prev_slot_BxS
    indexes all of k and has their length); a cached call passes the cache's newest
    key followed by the new ones, and smears the new ones."""
    k_prev = jnp.take_along_axis(k_BxSxHxK, prev_slot_BxS[:, :, None, None], axis=1)
    k_BxSxHxK = k_BxSxHxK[:, keys_from]
    keep_H = jax.nn.sigmoid(smear_H.astype(jnp.float32)).astype(k_BxSxHxK.dtype)
    mixed = keep_H[:, None] * k_BxSxHxK + (1 - keep_H[:, None]) * k_prev
    return jnp.where(has_prev_BxS[:, :, None, None], mixed, k_BxSxHxK)


def newest_key(k_BxTxGxK: jax.Array, valid_BxT: jax.Array, last_BxGxK: jax.Array) -> jax.Array:
    """[B, G, K]: each row's key of its last valid new token, or `last_BxGxK` if none."""
    length = k_BxTxGxK.shape[1]
    last_t_B = jnp.max(jnp.where(valid_BxT, jnp.arange(length), -1), axis=1)
    picked = jnp.take_along_axis(k_BxTxGxK, jnp.maximum(last_t_B, 0)[:, None, None, None],
                                 axis=1)[:, 0]
    return jnp.where((last_t_B >= 0)[:, None, None], picked.astype(last_BxGxK.dtype), last_BxGxK)


def query_blocks(ctx: dict[str, Any], n_queries: int, n_keys: int, causal_block: int):
    """Static (t0, t1, s1) blocks: queries [t0, t1) attend to key slots [0, s1).

    When ctx says the slots are causal (`"causal_slots"` present: query t and key t are
    the same slot 0..L-1, as in a forward without a cache), a query never attends to a
    later slot, so the queries are split into blocks of `causal_block` (model.causal_block;
    0 = off) and block i reads only the keys up to its last query: most of the masked
    upper triangle of the scores is never computed (blocks of 64 at L = 512: 56% of the
    square is). Otherwise (a KV cache: the queries sit at a traced fill index) one block
    over every key.
    """
    if "causal_slots" not in ctx or not causal_block or n_queries <= causal_block:
        return ((0, n_queries, n_keys),)
    if n_queries != n_keys:
        raise ValueError(f"causal_slots with {n_queries} queries and {n_keys} keys")
    return tuple((t0, min(t0 + causal_block, n_queries), min(t0 + causal_block, n_queries))
                 for t0 in range(0, n_queries, causal_block))


def _head_matmuls(n_heads: int, n_kv: int):
    """(qk, pv) for heads-first operands: scores [H, B, T, S] = q [H, B, T, K] . k [G, B, S, K]
    and out [H, B, T, K] = p [H, B, T, S] . v [G, B, S, K]; with G < H the queries run as
    [G, H / G, ...] groups, so no key/value is copied per query head."""
    if n_kv == n_heads:
        return (lambda q_, k_: jnp.einsum("hbtk,hbsk->hbts", q_, k_),
                lambda p_, v_: jnp.einsum("hbts,hbsk->hbtk", p_, v_))
    group = lambda a: a.reshape((n_kv, n_heads // n_kv) + a.shape[1:])  # noqa: E731
    ungroup = lambda a: a.reshape((n_heads,) + a.shape[2:])  # noqa: E731
    return (lambda q_, k_: ungroup(jnp.einsum("grbtk,gbsk->grbts", group(q_), k_)),
            lambda p_, v_: ungroup(jnp.einsum("grbts,gbsk->grbtk", group(p_), v_)))


def _masked_probs(scores_1xBxTxS, mask_1xBxTxS, scale: float) -> jax.Array:
    """softmax(scores * scale) over the keys the mask allows, float32; 0 for masked pairs
    (a row with no allowed key is all 0)."""
    scores = jnp.where(mask_1xBxTxS, scores_1xBxTxS * scale, _MASKED_SCORE)
    return jnp.where(mask_1xBxTxS, jax.nn.softmax(scores, axis=-1), 0.0)


def relative_scores(q_position_HxBxNxK, r_MxHxK, ctx: dict[str, Any], t0: int, s1: int):
    """The relative term q_position_t . r_d(t,s) of queries t0 .. t0 + N - 1 and keys
    0 .. s1 - 1: [H, B, N, s1], for every pair the mask may keep.

    By default every distance's term is computed and gathered at ctx["distance_BxTxS"].
    When ctx has "slot_gap_distances" (queries are the causal block's slots and every kept
    pair's distance is its slot gap, d = t - s <= t0 + N - 1 < max_len), only distances
    0 .. t1 - 1 are computed (t1 = t0 + N, the block's keys: s1 == t1), and row n reads
    them reversed and shifted by n, by a reshape instead of a gather (whose backward is
    a scatter): flat = reversed rows with one pad column, then row n, key s is flat entry
    (N - 1) + n * t1 + s, i.e. distance t0 + n - s. Pairs with s > t read pad or the next
    row: the causal mask drops them.
    """
    n = q_position_HxBxNxK.shape[2]
    if "slot_gap_distances" not in ctx:
        by_distance_HxBxNxM = jnp.einsum("hbtk,mhk->hbtm", q_position_HxBxNxK, r_MxHxK)
        distance_1xBxNxS = ctx["distance_BxTxS"][None, :, t0:t0 + n, :s1]
        return jnp.take_along_axis(by_distance_HxBxNxM, distance_1xBxNxS, axis=-1)
    if s1 != t0 + n:
        raise ValueError(f"slot_gap_distances needs the causal block's keys: {s1} != {t0 + n}")
    reversed_HxBxNxT = jnp.einsum("hbtk,mhk->hbtm", q_position_HxBxNxK, r_MxHxK[s1 - 1::-1])
    h, b = reversed_HxBxNxT.shape[:2]
    flat = jnp.pad(reversed_HxBxNxT, ((0, 0), (0, 0), (0, 0), (0, 1))).reshape(h, b, -1)
    return flat[:, :, n - 1:n - 1 + n * s1].reshape(h, b, n, s1)


def attend(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, ctx: dict[str, Any], scale: float,
           position=None, causal_block: int = 0) -> jax.Array:
    """softmax((q . k [+ position term]) * scale, masked by ctx) @ v: [B, T, H, K].

    k and v may have G < H heads (grouped-query): query head h reads key head h // (H / G).

    `position`: (q_position_BxTxHxK, r_MxHxK) for Transformer-XL relative attention: the
    term q_position_t . r_d with d = ctx["distance_BxTxS"][b, t, s], computed for every
    distance and gathered. Scores and softmax in float32; the probabilities are rounded
    to the compute dtype for the weighted sum (as before).

    Layout: the head axis leads ([H, B, T, S] scores), so that every attention matmul
    is batched over (h, b) or h with its output already in the layout the next step
    reads: q, k and v are transposed once per layer (not once per block), and the
    position matmul (batched over h only) writes [H, B, T, M] directly. On XLA:CPU this
    is ~5% faster per 44M step than [B, H, T, S], whose position term and per-block key
    slices each cost a transposed copy. Queries run in blocks (`query_blocks`).
    """
    dt = v_BxSxHxK.dtype
    heads_first = lambda a: jnp.transpose(a, (2, 0, 1, 3))
    q, k, v = heads_first(q_BxTxHxK), heads_first(k_BxSxHxK), heads_first(v_BxSxHxK)
    q_position = None if position is None else heads_first(position[0])
    qk, pv = _head_matmuls(q.shape[0], k.shape[0])
    pieces = []
    for t0, t1, s1 in query_blocks(ctx, q.shape[2], k.shape[2], causal_block):
        scores = qk(q[:, :, t0:t1], k[:, :, :s1])
        scores = scores.astype(jnp.float32)
        if q_position is not None:
            scores = scores + relative_scores(q_position[:, :, t0:t1], position[1], ctx,
                                              t0, s1).astype(jnp.float32)
        probs = _masked_probs(scores, ctx["mask_BxTxS"][None, :, t0:t1, :s1], scale)
        pieces.append(pv(probs.astype(dt), v[:, :, :s1]))
    out_HxBxTxK = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=2)
    return jnp.transpose(out_HxBxTxK, (1, 2, 0, 3))


def attend_cached(q_BxTxHxK, cache_k_GxBxSxK, cache_v_GxBxSxK, k_BxTxGxK, v_BxTxGxK,
                  ctx: dict[str, Any], scale: float, position=None) -> jax.Array:
    """`attend` for T new tokens over a KV cache (ctx from `cached_attention_context`): one
    softmax over the cache's slots and the new block, each read where it lies. The cache is
    read in its own layout ([G, B, S, K], the heads-first layout `attend` computes in), never
    copied, so a decode step costs what its T tokens read. Returns [B, T, H, K].
    """
    dt = cache_v_GxBxSxK.dtype
    heads_first = lambda a: jnp.transpose(a, (2, 0, 1, 3))
    q, k_new, v_new = heads_first(q_BxTxHxK), heads_first(k_BxTxGxK), heads_first(v_BxTxGxK)
    k_new, v_new = k_new.astype(dt), v_new.astype(dt)
    qk, pv = _head_matmuls(q.shape[0], cache_k_GxBxSxK.shape[0])
    scores_cache = qk(q, cache_k_GxBxSxK).astype(jnp.float32)
    scores_new = qk(q, k_new).astype(jnp.float32)
    if position is not None:
        q_position, r_MxHxK = position
        by_distance_HxBxTxM = jnp.einsum("hbtk,mhk->hbtm", heads_first(q_position), r_MxHxK)
        gather = lambda d_BxTxN: jnp.take_along_axis(
            by_distance_HxBxTxM, d_BxTxN[None], axis=-1).astype(jnp.float32)
        scores_cache = scores_cache + gather(ctx["distance_cache_BxTxS"])
        scores_new = scores_new + gather(ctx["distance_new_BxTxT"])
    mask = jnp.concatenate([ctx["mask_cache_BxTxS"], ctx["mask_new_BxTxT"]], axis=-1)[None]
    probs = _masked_probs(jnp.concatenate([scores_cache, scores_new], axis=-1), mask,
                          scale).astype(dt)
    n_slots = cache_k_GxBxSxK.shape[2]
    out_HxBxTxK = pv(probs[..., :n_slots], cache_v_GxBxSxK) + pv(probs[..., n_slots:], v_new)
    return jnp.transpose(out_HxBxTxK, (1, 2, 0, 3))


def attend_written(q_BxTxHxK, k_GxBxSxK, v_GxBxSxK, ctx: dict[str, Any], scale: float,
                   position=None) -> jax.Array:
    """`attend_cached` for a looped layer, whose cache already holds the T new tokens at
    [index, index + T): one read of the S slots (ctx's "mask_written_BxTxS",
    "distance_written_BxTxS"). Returns [B, T, H, K]."""
    dt = v_GxBxSxK.dtype
    heads_first = lambda a: jnp.transpose(a, (2, 0, 1, 3))
    q = heads_first(q_BxTxHxK)
    qk, pv = _head_matmuls(q.shape[0], k_GxBxSxK.shape[0])
    scores = qk(q, k_GxBxSxK).astype(jnp.float32)
    if position is not None:
        q_position, r_MxHxK = position
        by_distance_HxBxTxM = jnp.einsum("hbtk,mhk->hbtm", heads_first(q_position), r_MxHxK)
        scores = scores + jnp.take_along_axis(by_distance_HxBxTxM,
                                              ctx["distance_written_BxTxS"][None],
                                              axis=-1).astype(jnp.float32)
    probs = _masked_probs(scores, ctx["mask_written_BxTxS"][None], scale).astype(dt)
    return jnp.transpose(pv(probs, v_GxBxSxK), (1, 2, 0, 3))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""
    spec: ModelSpec

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, ctx: dict[str, Any],
                 layer_kv: dict[str, jax.Array] | None = None, query_BxQ=None):
        """Returns (x_BxTxD, new_kv) as Attention does; the signature fits nn.scan (carry, ys).
        `query_BxQ`: only those slots' outputs ([B, Q, D]; see Attention)."""
        y, new_kv = Attention(self.spec, name="attn")(
            RMSNorm(self.spec, name="attn_norm")(x_BxTxD), ctx, layer_kv, query_BxQ)
        if query_BxQ is not None:
            x_BxTxD = take_rows(x_BxTxD, query_BxQ)
        x = x_BxTxD + y
        x = x + Mlp(self.spec, name="mlp")(RMSNorm(self.spec, name="mlp_norm")(x))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, new_kv
