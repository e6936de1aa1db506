"""Token embedding and the per-role heads (final RMSNorm + projection).

Heads compute in the compute dtype and return float32 outputs.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparrow_jax.model.layers import RMSNorm, logical_param
from sparrow_jax.model.spec import ModelSpec

# Output width of each kind of role head; "lm" means vocab_size.
HEAD_KINDS = ("lm", "elo", "yes_no", "elo_lm")
_HEAD_WIDTH = {"elo": 1, "yes_no": 2}


def lm_logits(h_BxLxD: jax.Array, w_DxV: jax.Array) -> jax.Array:
    """float32 logits_BxLxV = h @ w, products accumulated in float32.

    The forward is the plain einsum. The backward is written out (`_lm_logits_bwd`)
    so that XLA:CPU gets two plain matmuls on a cotangent materialised once, in its
    natural [B*L, V] layout: left to autodiff, XLA fuses the producer of the cotangent
    (the loss's softmax gradient) into both matmuls, and writes it transposed for the
    weight gradient, a slow strided loop (11% of the tiny hydra's RL update). bfloat16
    inputs: the cotangent is rounded to bfloat16 (as every other activation cotangent
    of a bf16 model is), so both backward matmuls take bf16 inputs; autodiff would run
    them in float32 on upcast weights, at about half the speed. Gradients keep the
    input dtypes, as autodiff's do.
    """
    if h_BxLxD.dtype != w_DxV.dtype:
        return jnp.einsum("bld,dv->blv", h_BxLxD, w_DxV, preferred_element_type=jnp.float32)
    return _lm_logits(h_BxLxD, w_DxV)


@jax.custom_vjp
def _lm_logits(h_BxLxD, w_DxV):
    return jnp.einsum("bld,dv->blv", h_BxLxD, w_DxV, preferred_element_type=jnp.float32)


def _lm_logits_fwd(h_BxLxD, w_DxV):
    return _lm_logits(h_BxLxD, w_DxV), (h_BxLxD, w_DxV)


def _lm_logits_bwd(residuals, g_BxLxV):
    h_BxLxD, w_DxV = residuals
    # Rounded (bf16) and materialised once, before both matmuls read it.
    g_BxLxV = jax.lax.optimization_barrier(g_BxLxV.astype(h_BxLxD.dtype))
    grad_h = jnp.einsum("blv,dv->bld", g_BxLxV, w_DxV, preferred_element_type=jnp.float32)
    grad_w = jnp.einsum("bld,blv->dv", h_BxLxD, g_BxLxV, preferred_element_type=jnp.float32)
    return grad_h.astype(h_BxLxD.dtype), grad_w.astype(w_DxV.dtype)


_lm_logits.defvjp(_lm_logits_fwd, _lm_logits_bwd)


class Embed(nn.Module):
    """tokens_BxL int -> x_BxLxD in the compute dtype; times sqrt(d_model) (rounded to
    the compute dtype) with `embed_scale` (Gemma), else unscaled."""
    spec: ModelSpec

    @nn.compact
    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        s = self.spec
        table = logical_param(self, "embedding", (s.vocab_size, s.d_model), ("vocab", "embed"),
                       nn.initializers.normal(s.init_std))
        x = jnp.take(table, tokens_BxL, axis=0).astype(s.dtype)
        if s.embed_scale:
            x = x * jnp.asarray(s.d_model ** 0.5, s.dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class RoleHead(nn.Module):
    """Final RMSNorm, then the role's projection.

    kind 'lm': logits_BxLxV (own 'unembed' [D, V], or the trunk embedding
    transposed when tied_embeddings); 'elo': elo_BxL; 'yes_no': logits_BxLx2;
    'elo_lm': the Elo head and an LM head side by side, plus a scalar
    'likelihood_scale' (init 1): a dict {'elo': elo_BxL, 'logits': logits_BxLxV,
    'likelihood_scale': []} (the preference RM with `model.pref_rm_likelihood`).
    Returns (output float32, h_BxLxD the final-normed activations).
    """
    spec: ModelSpec
    kind: str

    def _lm_logits(self, h_BxLxD, embedding_VxD):
        s = self.spec
        if s.tied_embeddings:
            if embedding_VxD is None:
                raise ValueError("tied_embeddings: the LM head needs the trunk embedding")
            w_DxV = embedding_VxD.T
        else:
            w_DxV = logical_param(self, "unembed", (s.d_model, s.vocab_size), ("embed", "vocab"),
                                  nn.initializers.normal(s.init_std))
        out = lm_logits(h_BxLxD, w_DxV.astype(s.dtype))
        return nn.with_logical_constraint(out, ("batch", "length", "vocab"))

    def _scalar_head(self, h_BxLxD, width: int):
        s = self.spec
        w = logical_param(self, "head", (s.d_model, width), ("embed", "classes"),
                          nn.initializers.normal(s.init_std))
        return jnp.einsum("bld,dc->blc", h_BxLxD, w.astype(s.dtype),
                          preferred_element_type=jnp.float32)

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, embedding_VxD: jax.Array | None = None):
        h = RMSNorm(self.spec, name="final_norm")(x_BxLxD)
        if self.kind == "lm":
            return self._lm_logits(h, embedding_VxD), h
        if self.kind == "elo_lm":
            scale = logical_param(self, "likelihood_scale", (), (), nn.initializers.ones)
            return {"elo": self._scalar_head(h, 1)[..., 0],
                    "logits": self._lm_logits(h, embedding_VxD),
                    "likelihood_scale": scale.astype(jnp.float32)}, h
        out = self._scalar_head(h, _HEAD_WIDTH[self.kind])
        return (out[..., 0] if self.kind == "elo" else out), h


class ValueHead(nn.Module):
    """value_BxL float32 from the policy top's final-normed h_BxLxD.

    `value_layers` hidden layers of width `value_hidden` with GELU, then a
    linear map to one scalar per token; no biases.
    """
    spec: ModelSpec

    @nn.compact
    def __call__(self, h_BxLxD: jax.Array) -> jax.Array:
        s = self.spec
        init = nn.initializers.normal(s.init_std)
        x, in_axis, width = h_BxLxD.astype(s.dtype), "embed", s.d_model
        for i in range(s.value_layers):
            w = logical_param(self, f"hidden_{i}", (width, s.value_hidden),
                              (in_axis, "value_hidden"), init)
            x = jax.nn.gelu(jnp.einsum("bli,io->blo", x, w.astype(s.dtype)))
            in_axis, width = "value_hidden", s.value_hidden
        w_out = logical_param(self, "out", (width, 1), (in_axis, "classes"), init)
        return jnp.einsum("bli,io->blo", x, w_out.astype(s.dtype),
                          preferred_element_type=jnp.float32)[..., 0]
