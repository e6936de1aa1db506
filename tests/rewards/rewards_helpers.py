"""Tiny random models and ragged batches for the reward tests (float32 for exact comparisons)."""
import zlib

import jax
import numpy as np

from sparrow_jax.config import model_defaults
from sparrow_jax.model import hydra


def tiny_model_cfg(**overrides):
    """~100k parameters, 2 frozen + 2 own layers, float32 compute."""
    cfg = model_defaults()
    cfg.vocab_size, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff = 64, 32, 2, 16, 64
    cfg.n_layers, cfg.n_frozen_layers, cfg.max_len, cfg.value_hidden = 4, 2, 32, 16
    cfg.compute_dtype = "float32"
    cfg.init_std = 0.3  # sharp attention: a wrong mask or position shows up as a large error
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def random_params(cfg, roles, seed=0, bias_scale=0.5):
    """init_params with the zero-initialised u/v attention biases made random."""
    params = jax.tree.map(np.asarray, hydra.init_params(cfg, jax.random.PRNGKey(seed), roles))

    def visit(path, leaf):
        name = jax.tree_util.keystr(path)
        if "u_bias" in name or "v_bias" in name:
            local = np.random.default_rng(zlib.crc32(name.encode()) + seed)
            return (bias_scale * local.standard_normal(leaf.shape)).astype(leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(visit, params)


def right_padded(lengths, width, vocab, seed, pad_id=0):
    """tokens int32 [B, width] (random ids >= 1, then pad_id) and valid bool [B, width]."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, size=(len(lengths), width)).astype(np.int32)
    valid = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    return np.where(valid, tokens, pad_id).astype(np.int32), valid
