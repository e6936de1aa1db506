"""Position encodings and attention masks, all driven by explicit positions.

Queries and keys are identified twice: by *slot* (their index in the key
buffer: the sequence in a plain forward, the KV cache in decoding) and by
*position* (the token's place in its dialogue, which may start at an offset or
restart in a packed row). Causality uses both; position encodings use only
positions, which is what makes cached decoding equal the full forward.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sinusoidal_table(n_distances: int, width: int, dtype=jnp.float32) -> jax.Array:
    """Transformer-XL relative encodings R_d for d in [0, n_distances).

    Returns R_MxD (M = n_distances, D = width): [sin(d w_i), cos(d w_i)] with
    w_i = 10000^(-2i/D). Built from iota, so under jit it is computed on device
    rather than embedded in the program as a (possibly 64 MB) constant.
    """
    half = (width + 1) // 2
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / width))
    angles_MxF = jnp.arange(n_distances, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    table = jnp.concatenate([jnp.sin(angles_MxF), jnp.cos(angles_MxF)], axis=-1)
    return table[:, :width].astype(dtype)


def relative_distance(q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, max_len: int) -> jax.Array:
    """d = query_pos - key_pos clipped to [0, max_len); int32 [B, T, S].

    Negative distances only occur for pairs the causal mask removes, so the
    clip there is harmless; distances >= max_len share the last encoding.
    """
    d = q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]
    return jnp.clip(d, 0, max_len - 1).astype(jnp.int32)


def apply_rotary(x_BxTxHxK: jax.Array, pos_BxT: jax.Array, base: float) -> jax.Array:
    """Rotate the two halves of each head by angle pos * base^(-2i/K) (RoPE)."""
    k = x_BxTxHxK.shape[-1]
    inv_freq = 1.0 / (base ** (jnp.arange(k // 2, dtype=jnp.float32) * 2.0 / k))
    angles_BxTx1xF = pos_BxT.astype(jnp.float32)[:, :, None, None] * inv_freq
    cos, sin = jnp.cos(angles_BxTx1xF), jnp.sin(angles_BxTx1xF)
    x = x_BxTxHxK.astype(jnp.float32)
    x1, x2 = x[..., : k // 2], x[..., k // 2:]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BxTxHxK.dtype)


def attention_mask(q_slot_T: jax.Array, k_slot_S: jax.Array,
                   q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, k_valid_BxS: jax.Array,
                   q_seg_BxT: jax.Array | None = None,
                   k_seg_BxS: jax.Array | None = None) -> jax.Array:
    """bool [B, T, S]: may query t attend to key s?

    Requires the key to be valid (a real, written token), causally earlier or
    equal by slot and by position, and in the same segment when segments are
    given. A query with no allowed key gets an all-False row; attention turns
    that into a zero output rather than NaN.
    """
    causal_TxS = k_slot_S[None, :] <= q_slot_T[:, None]
    mask = causal_TxS[None] & (k_pos_BxS[:, None, :] <= q_pos_BxT[:, :, None])
    mask = mask & k_valid_BxS[:, None, :]
    if q_seg_BxT is not None:
        mask = mask & (q_seg_BxT[:, :, None] == k_seg_BxS[:, None, :])
    return mask
