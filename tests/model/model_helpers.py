"""Tiny model configs shared by the model tests (float32 compute for exact comparisons)."""
import zlib

import jax

from sparrow_jax.config import model_defaults


def tiny_model_cfg(**overrides):
    """A ~100k-parameter model config; 2 frozen + 2 own layers so all stacks share a shape."""
    cfg = model_defaults()
    cfg.vocab_size = 64
    cfg.d_model = 32
    cfg.n_heads = 2
    cfg.head_dim = 16
    cfg.d_ff = 64
    cfg.n_layers = 4
    cfg.n_frozen_layers = 2
    cfg.max_len = 32
    cfg.value_hidden = 16
    cfg.compute_dtype = "float32"
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def sharpen(params, rng, bias_scale=0.5):
    """Give the zero-initialised u/v biases random values so tests exercise them.

    Together with a large init_std this makes attention sharp and position
    dependent, so a wrong mask or distance shows up as a large error.
    """
    def visit(path, leaf):
        name = jax.tree_util.keystr(path)
        if "u_bias" in name or "v_bias" in name:
            key = jax.random.fold_in(rng, zlib.crc32(name.encode()))
            return bias_scale * jax.random.normal(key, leaf.shape, leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(visit, params)
