"""Pod configs for models imported from open weights (`sparrow import`): the experiment files
experiments/gemma_2b.py and experiments/llama3_2_1b.py are a published config.json, a frozen
depth and a microbatch each; the rest is here, once.

    cfg = open_weight_config("gemma_2b", HF_CONFIG, "v5e_8", n_frozen_layers=14,
                             vocab_size=256006, microbatch=1, imported="runs/gemma_2b/imported")
"""
from __future__ import annotations

from typing import Mapping, Sequence

from sparrow_jax.config import pod_config
from sparrow_jax.hf.families import model_overrides

# variant: (devices = chips, HBM budget name); JAX sees one device per chip.
MESHES = {
    "v5e_8": (8, "v5e"),
    "v4_8": (4, "v4"),
    "v5p_8": (4, "v5p"),
    "v5e_32": (32, "v5e"),   # 4 hosts
}
EPISODES_PER_STEP = 64


def open_weight_config(name: str, hf_config: Mapping, variant: str, *, n_frozen_layers: int,
                       vocab_size: int, microbatch: int, imported: str,
                       decode_rules: Sequence[tuple[str, str]] = ()):
    """`config.pod_config` (stage rl, EPISODES_PER_STEP episodes a step, FSDP over every chip,
    model-parallel decoding) with the model keys `sparrow import` makes of `hf_config`.

    vocab_size: the imported vocabulary (the published one plus any control ids the import
    appends).  imported: `train.init_from`, the import's workdir (a placeholder to override).
    decode_rules: logical-axis rules appended to the decode layout's.
    Raises ValueError for a variant not in MESHES."""
    if variant not in MESHES:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(MESHES)}")
    devices, hbm = MESHES[variant]
    cfg = pod_config(f"{name}_{variant}", d_model=hf_config["hidden_size"],
                     n_heads=hf_config["num_attention_heads"], d_ff=hf_config["intermediate_size"],
                     n_layers=hf_config["num_hidden_layers"], n_frozen_layers=n_frozen_layers,
                     devices=devices, hbm=hbm, microbatch=microbatch, value_hidden=1024,
                     learning_rate=5e-6, batch_size=EPISODES_PER_STEP, decode="model_parallel")
    for key, value in model_overrides(dict(hf_config)).items():
        cfg.model[key] = value
    cfg.model.vocab_size = vocab_size
    if decode_rules:
        cfg.mesh.decode_logical_axis_rules = [*cfg.mesh.decode_logical_axis_rules, *decode_rules]
    cfg.model.max_len = cfg.train.seq_len   # rotary: no table; the longest sequence used
    cfg.train.init_from = imported
    return cfg


def open_weight_sweep():
    """RL learning rate x KL weight alpha: 4 runs from one shared sft workdir and one pair of
    reward models (no model key varies)."""
    from sparrow_jax.sweeps import product, sweep_axis
    return product(sweep_axis("train.learning_rate", [2e-6, 5e-6]),
                   sweep_axis("rl.alpha", [0.05, 0.1]))
