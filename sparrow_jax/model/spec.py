"""ModelSpec: the static, hashable view of `cfg.model` that the modules read.

Linen modules and jax transforms want hashable, immutable attributes; an
ml_collections ConfigDict is neither, so every public entry point converts the
config once with `ModelSpec.of(model_cfg)`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    d_model: int
    n_heads: int
    head_dim: int
    d_ff: int
    n_layers: int
    n_frozen_layers: int
    max_len: int
    position: str
    mlp: str
    tied_embeddings: bool
    param_dtype: str
    compute_dtype: str
    remat: str
    scan_layers: bool
    norm_eps: float
    init_std: float
    rotary_base: float
    value_hidden: int
    value_layers: int
    smeared_keys: bool = False
    pref_rm_likelihood: bool = False
    causal_block: int = 64
    # Open-weight families (issue 18); the defaults are the Chinchilla model.
    n_kv_heads: int = 0
    norm_unit_offset: bool = False
    embed_scale: bool = False
    rotary_scaling: str = "none"
    rotary_scaling_factor: float = 1.0
    rotary_low_freq_factor: float = 1.0
    rotary_high_freq_factor: float = 4.0
    rotary_original_max_len: int = 8192
    # Forward-only calls (RL rollouts and reward scoring, `rl.projection_dtype`): 'bfloat16'
    # = weight projections take bf16 inputs in a float32 model; '' = the compute dtype.
    projection_dtype: str = ""

    @classmethod
    def of(cls, model_cfg: Any) -> "ModelSpec":
        """Build from a ConfigDict, a mapping or another ModelSpec."""
        if isinstance(model_cfg, ModelSpec):
            return model_cfg
        get = (model_cfg.get if isinstance(model_cfg, Mapping) or hasattr(model_cfg, "get")
               else lambda k: getattr(model_cfg, k))
        values = {f.name: get(f.name) for f in dataclasses.fields(cls)}
        # Fields with a default may be absent (configs written before they existed).
        values = {k: v for k, v in values.items()
                  if v is not None or cls.__dataclass_fields__[k].default is dataclasses.MISSING}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise ValueError(f"model config is missing keys {missing}")
        return cls(**values)

    @property
    def n_top_layers(self) -> int:
        """Layers each role owns above the shared trunk."""
        return self.n_layers - self.n_frozen_layers

    @property
    def kv_heads(self) -> int:
        """Key/value heads (n_kv_heads, 0 = n_heads); each serves n_heads // kv_heads queries."""
        return self.n_kv_heads or self.n_heads

    @property
    def kv_heads_axis(self) -> str:
        """Logical axis of the key/value heads: 'heads' without grouping (today's sharding),
        else 'kv_heads' (replicated unless the mesh rules name it: few heads rarely divide
        the tensor axis)."""
        return "heads" if self.kv_heads == self.n_heads else "kv_heads"

    @property
    def rotary_scaling_spec(self) -> tuple | None:
        """The `positions.rotary_inv_freq` scaling tuple, None when unscaled."""
        if self.rotary_scaling == "none":
            return None
        return (self.rotary_scaling, self.rotary_scaling_factor, self.rotary_low_freq_factor,
                self.rotary_high_freq_factor, self.rotary_original_max_len)

    @property
    def dtype(self):
        """Compute dtype (activations, matmul inputs, KV cache)."""
        return _DTYPES[self.compute_dtype]

    def with_projection_dtype(self, name: str) -> "ModelSpec":
        """This spec with weight projections fed `name` ('float32' | 'bfloat16') inputs,
        for forward-only calls (no gradient rule: `layers.project`). Only narrows: with
        a bfloat16 compute dtype (or name 'float32') the projections are the model's own."""
        if name not in _DTYPES:
            raise ValueError(f"projection dtype must be one of {sorted(_DTYPES)}, got {name!r}")
        narrow = name == "bfloat16" and self.compute_dtype == "float32"
        return dataclasses.replace(self, projection_dtype="bfloat16" if narrow else "")

    @property
    def narrow_projection_dtype(self):
        """Input dtype of the weight projections when narrower than the compute dtype
        (`with_projection_dtype`), else None."""
        return _DTYPES[self.projection_dtype] if self.projection_dtype else None

    @property
    def pdtype(self):
        """Parameter (master weight) dtype."""
        return _DTYPES[self.param_dtype]

    @property
    def remat_policy(self):
        """jax.checkpoint policy; only meaningful when remat != 'none'."""
        return _REMAT_POLICIES[self.remat]
