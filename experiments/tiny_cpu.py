"""Tiny CPU config: the toy world end to end on this machine in minutes.

Variants (`experiments/tiny_cpu.py:<stage>`) pick the training stage.
"""
from sparrow_jax.config import default_config


def get_config(variant: str = "sft"):
    cfg = default_config()
    cfg.name = f"tiny_cpu_{variant}"
    m = cfg.model
    m.vocab_size = 1024
    m.d_model = 128
    m.n_heads = 4
    m.head_dim = 32
    m.d_ff = 512
    m.n_layers = 4
    m.n_frozen_layers = 2
    m.max_len = 256
    m.compute_dtype = "float32"
    m.value_hidden = 128
    cfg.train.stage = variant
    return cfg


def get_sweep(variant: str = "sft"):
    """Learning rate x depth of the frozen shared trunk: 4 runs (`sparrow sweep`)."""
    from sparrow_jax.sweeps import product, sweep_axis
    return product(sweep_axis("train.learning_rate", [1e-3, 3e-4]),
                   sweep_axis("model.n_frozen_layers", [1, 2]))
