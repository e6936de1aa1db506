"""A NumPy (float64) decoder written from the papers' formulas, to check the trunk features
the open-weight families need (grouped-query attention, SwiGLU, Gemma's norm and embedding
scale, RoPE scaling, tied / untied heads) against `hydra.forward`.

It reads the hydra's param tree (trunk + policy) but none of its code: loops over layers
and heads, an explicit causal-and-padding mask, rotary angles from a per-frequency loop.
"""
import math

import numpy as np


def inv_freq(head_dim, base, scaling=None):
    """RoPE frequencies, Llama 3.1's rope_scaling written per frequency (as its paper's code)."""
    freqs = [1.0 / base ** (2 * i / head_dim) for i in range(head_dim // 2)]
    if scaling is None or scaling[0] == "none":
        return np.array(freqs)
    if scaling[0] == "linear":
        return np.array(freqs) / scaling[1]
    _, factor, low, high, original = scaling
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < original / high:
            out.append(f)
        elif wavelen > original / low:
            out.append(f / factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


def _rms(x, scale, eps, unit_offset):
    x = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * ((1.0 + scale) if unit_offset else scale)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _silu(x):
    return x / (1 + np.exp(-x))


def _rotate(x_TxK, pos_T, freqs):
    half = x_TxK.shape[-1] // 2
    ang = pos_T[:, None] * freqs[None, :]
    x1, x2 = x_TxK[:, :half], x_TxK[:, half:]
    return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                           x2 * np.cos(ang) + x1 * np.sin(ang)], axis=-1)


def forward(params, m, tokens_BxL, positions_BxL, valid_BxL):
    """Policy logits [B, L, V] (float64) of a rotary model `m` (the config's model section)."""
    p = {k: np.asarray(v, np.float64) for k, v in _flat(params).items()}
    n_heads, kv = m.n_heads, m.n_kv_heads or m.n_heads
    group = n_heads // kv
    scaling = (None if m.rotary_scaling == "none" else
               (m.rotary_scaling, m.rotary_scaling_factor, m.rotary_low_freq_factor,
                m.rotary_high_freq_factor, m.rotary_original_max_len))
    freqs = inv_freq(m.head_dim, m.rotary_base, scaling)
    layers = [("trunk/layers", i) for i in range(m.n_frozen_layers)]
    layers += [("policy/layers", i) for i in range(m.n_layers - m.n_frozen_layers)]
    out = []
    for b in range(tokens_BxL.shape[0]):
        pos, valid = np.asarray(positions_BxL[b], np.float64), np.asarray(valid_BxL[b])
        length = len(pos)
        mask = np.array([[valid[s] and s <= t and pos[s] <= pos[t] for s in range(length)]
                         for t in range(length)])
        x = p["trunk/embedding"][np.asarray(tokens_BxL[b])]
        if m.embed_scale:
            x = x * math.sqrt(m.d_model)
        for stack, i in layers:
            w = {k[len(stack) + 1:]: v[i] for k, v in p.items() if k.startswith(stack + "/")}
            h = _rms(x, w["attn_norm/scale"], m.norm_eps, m.norm_unit_offset)
            attn = np.zeros_like(x)
            for head in range(n_heads):
                g = head // group
                q = _rotate(h @ w["attn/query"][:, head], pos, freqs)
                k = _rotate(h @ w["attn/key"][:, g], pos, freqs)
                v = h @ w["attn/value"][:, g]
                scores = np.where(mask, q @ k.T / math.sqrt(m.head_dim), -1e300)
                probs = np.exp(scores - scores.max(-1, keepdims=True))
                probs = np.where(mask, probs, 0.0)
                probs = probs / np.maximum(probs.sum(-1, keepdims=True), 1e-300)
                attn += (probs @ v) @ w["attn/out"][head]
            x = x + attn
            h = _rms(x, w["mlp_norm/scale"], m.norm_eps, m.norm_unit_offset)
            if m.mlp == "gelu":
                inner = _gelu_tanh(h @ w["mlp/wi"])
            else:
                act = _silu if m.mlp == "swiglu" else _gelu_tanh
                inner = act(h @ w["mlp/wi_gate"]) * (h @ w["mlp/wi_up"])
            x = x + inner @ w["mlp/wo"]
        h = _rms(x, p["policy/final_norm/scale"], m.norm_eps, m.norm_unit_offset)
        head = p["trunk/embedding"].T if m.tied_embeddings else p["policy/unembed"]
        out.append(h @ head)
    return np.stack(out)


def _flat(tree, prefix=""):
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
