"""The tiny model configs tests share (~30-100k parameters, float32 for exact comparisons)."""
from sparrow_jax.config import default_config, model_defaults

TINY_MODEL = {"vocab_size": 64, "d_model": 32, "n_heads": 2, "head_dim": 16, "d_ff": 64,
              "n_layers": 2, "n_frozen_layers": 1, "max_len": 32, "value_hidden": 16,
              "compute_dtype": "float32"}


def tiny_model_config(**overrides):
    """The `model` section of a tiny config; keyword arguments override TINY_MODEL."""
    cfg = model_defaults()
    for key, value in {**TINY_MODEL, **overrides}.items():
        cfg[key] = value
    return cfg


def tiny_config(mesh=None, **model_overrides):
    """A full config with the tiny model; `mesh` = (data, fsdp, tensor) or None for the default."""
    cfg = default_config()
    cfg.model = tiny_model_config(**model_overrides)
    if mesh is not None:
        cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = mesh
    return cfg
