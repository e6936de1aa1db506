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


def rotary_inv_freq(k: int, base: float, scaling: tuple | None = None) -> jax.Array:
    """float32 [K / 2] RoPE frequencies base^(-2i/K), rescaled as `scaling` says.

    scaling: None or ("none", ...) = unscaled; ("linear", factor, ...) divides every
    frequency by factor; ("llama3", factor, low_freq_factor, high_freq_factor,
    original_max_len) divides the frequencies whose wavelength exceeds
    original_max_len / low_freq_factor by factor, keeps those below
    original_max_len / high_freq_factor, and blends linearly in 1 / wavelength between.
    """
    inv_freq = 1.0 / (base ** (jnp.arange(k // 2, dtype=jnp.float32) * 2.0 / k))
    kind = "none" if scaling is None else scaling[0]
    if kind == "none":
        return inv_freq
    factor = scaling[1]
    if kind == "linear":
        return inv_freq / factor
    if kind != "llama3":
        raise ValueError(f"unknown rotary scaling {kind!r}")
    _, factor, low, high, original = scaling
    wavelen = 2 * jnp.pi / inv_freq
    scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return jnp.where(medium, blended, scaled)


def apply_rotary(x_BxTxHxK: jax.Array, pos_BxT: jax.Array, base: float,
                 scaling: tuple | None = None) -> jax.Array:
    """Rotate the two halves of each head by angle pos * inv_freq_i (RoPE;
    `rotary_inv_freq` gives inv_freq_i = base^(-2i/K), maybe rescaled)."""
    k = x_BxTxHxK.shape[-1]
    inv_freq = rotary_inv_freq(k, base, scaling)
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


def previous_token_slot(k_slot_S: jax.Array, k_pos_BxS: jax.Array, k_valid_BxS: jax.Array,
                        k_seg_BxS: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """For each key slot, the slot of the same sequence's previous token.

    Returns (prev_slot_BxS int32, has_prev_BxS bool). The previous token is the
    nearest earlier valid slot, accepted only when its position is one less (and
    its segment the same), so padding gaps, packed rows and a KV cache whose rows
    were filled to different lengths all give the token before in the text.
    """
    valid_slot_BxS = jnp.where(k_valid_BxS, k_slot_S[None, :], -1)
    last_valid_BxS = jax.lax.cummax(valid_slot_BxS, axis=1)
    prev_BxS = jnp.concatenate(
        [jnp.full_like(last_valid_BxS[:, :1], -1), last_valid_BxS[:, :-1]], axis=1)
    safe_prev_BxS = jnp.maximum(prev_BxS, 0)
    prev_pos_BxS = jnp.take_along_axis(k_pos_BxS, safe_prev_BxS, axis=1)
    has_prev = (prev_BxS >= 0) & (prev_pos_BxS == k_pos_BxS - 1) & k_valid_BxS
    if k_seg_BxS is not None:
        has_prev &= jnp.take_along_axis(k_seg_BxS, safe_prev_BxS, axis=1) == k_seg_BxS
    return safe_prev_BxS.astype(jnp.int32), has_prev
