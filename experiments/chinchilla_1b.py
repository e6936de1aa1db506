"""Sparrow recipe at Chinchilla 1.0B, for scaled-down runs on a small TPU slice.

Shape: the "1.0B" row of docs/recipe.md section 3 (Chinchilla's smaller shapes,
d_model / ffw / head size / heads / layers = 1792 / 7168 / 128 / 14 / 23), with
Sparrow's 32k vocab, context 2048 and Transformer-XL relative attention. The
bottom 18 of 23 layers (0.8 as in Sparrow's 64 of 80, rounded) are the frozen
shared trunk. Trunk + policy is about 1.08e9 parameters: 0.96e9 in the layers
and 2 x 57e6 in the untied embedding [V, D] and unembedding [D, V].

Variants are named after the TPU type, whose number counts TensorCores; JAX sees
one device per chip, so v5p-8 and v4-8 are 4 devices and v5p-16 is 8. The mesh
is FSDP only (14 heads do not split over a tensor axis of 4). Default: `v5p_8`.

The stage is rl: train.batch_size = EPISODES_PER_STEP, sampled and rule-scored at
once, so it is what the sampler fits on v4-8 (`sparrow aot`: 256 episodes need 61 GiB
per chip); the update accumulates them over microbatches of MICROBATCH_PER_DEVICE
sequences per device. Prompts of 1536 tokens, agent turns of 128 (`pod_config`). The
sampler decodes data-parallel, every weight replicated: 14 heads do not split over fsdp
either, and 1.1e9 f32 parameters (4.3 GB) fit beside the state. The earlier stages
(`--config.train.stage=sft`, ...) may raise `--config.train.batch_size` (256 sequences
of 2048 tokens: 8 microbatches with `--config.train.grad_accum_steps=8` on 4 chips).
"""
from sparrow_jax.config import pod_config

MESHES = {
    # name: (devices = chips, HBM budget name)
    "v5p_8": (4, "v5p"),
    "v5p_16": (8, "v5p"),
    "v4_8": (4, "v4"),
}
N_LAYERS = 23
N_FROZEN_LAYERS = round(0.8 * N_LAYERS)  # 18
EPISODES_PER_STEP = 64  # RL episodes per update
MICROBATCH_PER_DEVICE = 8  # sequences per device per forward/backward pass


def get_config(variant: str = "v5p_8"):
    if variant not in MESHES:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(MESHES)}")
    devices, hbm = MESHES[variant]
    return pod_config(f"chinchilla_1b_{variant}", d_model=1792, n_heads=14, d_ff=7168,
                      n_layers=N_LAYERS, n_frozen_layers=N_FROZEN_LAYERS, devices=devices, hbm=hbm,
                      microbatch=MICROBATCH_PER_DEVICE, value_hidden=1024, learning_rate=1e-5,
                      batch_size=EPISODES_PER_STEP, decode="data_parallel")


def get_sweep(variant: str = "v5p_8"):
    """RL learning rate x KL weight alpha: 4 runs from one shared SFT checkpoint (no model
    key varies: `sparrow sweep` rejects that with a shared `train.init_from`)."""
    from sparrow_jax.sweeps import product, sweep_axis
    return product(sweep_axis("train.learning_rate", [5e-6, 1e-5]),
                   sweep_axis("rl.alpha", [0.05, 0.1]))
