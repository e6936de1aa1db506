"""Tiny model configs shared by the model tests (float32 compute for exact comparisons)."""
import zlib

import jax

import tiny_models


def tiny_model_cfg(**overrides):
    """A ~100k-parameter model config; 2 frozen + 2 own layers so all stacks share a shape."""
    return tiny_models.tiny_model_config(**{"n_layers": 4, "n_frozen_layers": 2, **overrides})


def sharpen(params, rng, bias_scale=0.5):
    """Give the zero-initialised u/v biases (and key-smearing weights) random values so
    tests exercise them.

    Together with a large init_std this makes attention sharp and position
    dependent, so a wrong mask or distance shows up as a large error.
    """
    def visit(path, leaf):
        name = jax.tree_util.keystr(path)
        if "u_bias" in name or "v_bias" in name or "smear" in name:
            key = jax.random.fold_in(rng, zlib.crc32(name.encode()))
            return bias_scale * jax.random.normal(key, leaf.shape, leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(visit, params)
