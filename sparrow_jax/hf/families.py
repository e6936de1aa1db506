"""Open-weight families: a Hugging Face `config.json` -> `model.*` keys, and the tensor plan
that maps the checkpoint's tensors onto the hydra's trunk and policy top.

Supported: Llama (LlamaForCausalLM: Llama 2, 3, 3.1, 3.2; SwiGLU, grouped-query, RoPE with
linear / llama3 scaling) and Gemma (GemmaForCausalLM: gated GELU, multi-query, (1 + w)
RMSNorm, sqrt(d_model) embedding scale, tied head). Every problem is an `HFImportError`
that names the config field or tensor.

A plan entry says, for one hydra leaf, which HF tensor fills it (per layer for a stack) and
how: HF linear weights are [out, in]; ours are [in, ...out] split by head.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

FAMILIES = {"LlamaForCausalLM": "llama", "GemmaForCausalLM": "gemma"}
_MODEL_TYPES = {"llama": "llama", "gemma": "gemma"}


class HFImportError(ValueError):
    """A checkpoint that cannot be imported; the message names the field or tensor."""


def family_of(hf: dict) -> str:
    """'llama' or 'gemma' from config.json's `architectures` (else `model_type`)."""
    archs = hf.get("architectures") or []
    for arch in archs:
        if arch in FAMILIES:
            return FAMILIES[arch]
    if not archs and hf.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[hf["model_type"]]
    raise HFImportError(
        f"config.json: architectures={archs!r} (model_type={hf.get('model_type')!r}) is not a "
        f"supported architecture; supported: {sorted(FAMILIES)}")


def _field(hf: dict, name: str, default: Any = dataclasses.MISSING):
    if name in hf and hf[name] is not None:
        return hf[name]
    if default is dataclasses.MISSING:
        raise HFImportError(f"config.json has no field {name!r}")
    return default


def _rope(hf: dict) -> dict:
    """model.rotary_* keys from rope_theta / rope_scaling (or transformers 5's rope_parameters)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or params
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    out = {"rotary_base": float(theta)}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind == "default":
        return out
    if kind == "linear":
        return {**out, "rotary_scaling": "linear",
                "rotary_scaling_factor": float(scaling["factor"])}
    if kind == "llama3":
        return {**out, "rotary_scaling": "llama3",
                "rotary_scaling_factor": float(scaling["factor"]),
                "rotary_low_freq_factor": float(scaling["low_freq_factor"]),
                "rotary_high_freq_factor": float(scaling["high_freq_factor"]),
                "rotary_original_max_len": int(scaling["original_max_position_embeddings"])}
    raise HFImportError(f"config.json: rope_scaling rope_type={kind!r} is not supported "
                        f"(default, linear, llama3)")


def model_overrides(hf: dict) -> dict:
    """The `model.*` keys (without n_frozen_layers) of the checkpoint config.json describes."""
    family = family_of(hf)
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise HFImportError(f"config.json: {flag}=true is not supported (no biases)")
    d_model, n_heads = int(_field(hf, "hidden_size")), int(_field(hf, "num_attention_heads"))
    head_dim = int(hf.get("head_dim") or d_model // n_heads)
    n_kv = int(_field(hf, "num_key_value_heads", n_heads))
    act = hf.get("hidden_activation") or hf.get("hidden_act")
    want_act = {"llama": ("silu",), "gemma": ("gelu_pytorch_tanh", "gelu")}[family]
    if act not in want_act:
        raise HFImportError(f"config.json: hidden_act={act!r}; {family} import supports "
                            f"{want_act} (gemma's 'gelu' is run as its tanh approximation)")
    m = {
        "vocab_size": int(_field(hf, "vocab_size")), "d_model": d_model, "n_heads": n_heads,
        "head_dim": head_dim, "n_kv_heads": 0 if n_kv == n_heads else n_kv,
        "d_ff": int(_field(hf, "intermediate_size")),
        "n_layers": int(_field(hf, "num_hidden_layers")),
        "max_len": int(_field(hf, "max_position_embeddings", 2048)),
        "norm_eps": float(_field(hf, "rms_norm_eps")), "position": "rotary",
        "mlp": "swiglu" if family == "llama" else "gated_gelu",
        "tied_embeddings": bool(hf.get("tie_word_embeddings", family == "gemma")),
        "norm_unit_offset": family == "gemma", "embed_scale": family == "gemma",
        "smeared_keys": False,
    }
    m.update(_rope(hf))
    return m


@dataclasses.dataclass(frozen=True)
class Entry:
    """One hydra leaf: `path` in the params, the HF tensor name (`{i}` = HF layer), the HF
    shape expected and the config fields that set it, and `to_ours` (array -> our layout)."""
    path: tuple[str, ...]
    hf_name: str
    hf_shape: tuple[int, ...]
    fields: str
    to_ours: Callable[[Any], Any]
    layers: tuple[int, ...] | None = None   # HF layer indices of a stack, bottom first

    def from_ours(self, ours):
        """Our layout (one layer) -> the HF tensor: the inverse of `to_ours`."""
        if self.to_ours is _same:
            return ours
        if self.path[-1] == "out":   # [H, K, D] -> o_proj [D, H * K]
            return ours.reshape(-1, ours.shape[-1]).T
        return ours.reshape(ours.shape[0], -1).T   # [in, ...out] -> [out, in]


def _same(w):
    """Tensors our layout shares with HF's (embedding, norm scales)."""
    return w


def _linear(shape_after: tuple[int, ...]):
    """HF [out, in] -> [in, *shape_after] (shape_after splits `out` by head)."""
    return lambda w: w.T.reshape((w.shape[1],) + shape_after)


def _out_proj(n_heads: int, head_dim: int):
    """HF o_proj [D, H * K] -> ours [H, K, D]."""
    return lambda w: w.T.reshape(n_heads, head_dim, w.shape[0])


def tensor_plan(m: dict, n_frozen: int) -> list[Entry]:
    """Plan entries for trunk (bottom n_frozen layers) and policy top (the rest)."""
    d, h, k, f, v = m["d_model"], m["n_heads"], m["head_dim"], m["d_ff"], m["vocab_size"]
    g = m["n_kv_heads"] or h
    per_layer = [
        (("attn", "query"), "self_attn.q_proj.weight", (h * k, d),
         "num_attention_heads * head_dim x hidden_size", _linear((h, k))),
        (("attn", "key"), "self_attn.k_proj.weight", (g * k, d),
         "num_key_value_heads * head_dim x hidden_size", _linear((g, k))),
        (("attn", "value"), "self_attn.v_proj.weight", (g * k, d),
         "num_key_value_heads * head_dim x hidden_size", _linear((g, k))),
        (("attn", "out"), "self_attn.o_proj.weight", (d, h * k),
         "hidden_size x num_attention_heads * head_dim", _out_proj(h, k)),
        (("attn_norm", "scale"), "input_layernorm.weight", (d,), "hidden_size", _same),
        (("mlp_norm", "scale"), "post_attention_layernorm.weight", (d,), "hidden_size", _same),
        (("mlp", "wi_gate"), "mlp.gate_proj.weight", (f, d), "intermediate_size x hidden_size",
         lambda w: w.T),
        (("mlp", "wi_up"), "mlp.up_proj.weight", (f, d), "intermediate_size x hidden_size",
         lambda w: w.T),
        (("mlp", "wo"), "mlp.down_proj.weight", (d, f), "hidden_size x intermediate_size",
         lambda w: w.T),
    ]
    plan = [Entry(("trunk", "embedding"), "model.embed_tokens.weight", (v, d),
                  "vocab_size x hidden_size", _same)]
    stacks = [("trunk", tuple(range(n_frozen))),
              ("policy", tuple(range(n_frozen, m["n_layers"])))]
    for stack, layers in stacks:
        if not layers:
            continue
        for sub, name, shape, fields, fn in per_layer:
            plan.append(Entry((stack, "layers") + sub, "model.layers.{i}." + name, shape,
                              fields, fn, layers))
    plan.append(Entry(("policy", "final_norm", "scale"), "model.norm.weight", (d,),
                      "hidden_size", _same))
    if not m["tied_embeddings"]:
        plan.append(Entry(("policy", "unembed"), "lm_head.weight", (v, d),
                          "vocab_size x hidden_size (tie_word_embeddings=false)", lambda w: w.T))
    return plan


FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def check_tensor(entry: Entry, name: str, shape, dtype: str) -> None:
    """Raise HFImportError when a tensor's shape or (safetensors) dtype cannot fill `entry`."""
    if tuple(shape) != entry.hf_shape:
        raise HFImportError(
            f"tensor {name}: shape {list(shape)} but config.json ({entry.fields}) gives "
            f"{list(entry.hf_shape)} for hydra param {'/'.join(entry.path)}")
    if dtype not in FLOAT_DTYPES:
        raise HFImportError(f"tensor {name}: dtype {dtype} is not one of {FLOAT_DTYPES} "
                            f"(hydra param {'/'.join(entry.path)})")
