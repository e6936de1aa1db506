"""Sparrow at Chinchilla 70B on a TPU pod (docs/recipe.md section 3).

80 layers, d_model 8192, 64 heads of 128, FFW 32768, 32k vocab, context 2048,
Transformer-XL relative attention; the bottom 64 layers are the frozen shared trunk.
Variants are named after the TPU type, whose number counts TensorCores; JAX sees
one device per chip, so v5p-512 is 256 devices, v5p-256 128, v5p-128 64 and
v4-256 128. Default: `v5p_512` (256 chips).

The stage is rl: train.batch_size = EPISODES_PER_STEP, sampled and rule-scored at once,
so it is what the sampler fits on v4-256 (`sparrow aot`: 256 episodes need 40 GiB per
chip there). Prompts of 1536 tokens, agent turns of 128 (`pod_config`); the sampler
decodes model-parallel. The earlier stages (`--config.train.stage=sft`, ...) may raise
`--config.train.batch_size`.
"""
from sparrow_jax.config import pod_config

MESHES = {
    # name: (devices = chips, HBM budget name); every mesh is fsdp x tensor=4.
    "v5p_512": (256, "v5p"),
    "v5p_256": (128, "v5p"),
    "v5p_128": (64, "v5p"),
    "v4_256": (128, "v4"),
}
TENSOR_PARALLEL = 4
EPISODES_PER_STEP = 128


def get_config(variant: str = "v5p_512"):
    if variant not in MESHES:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(MESHES)}")
    devices, hbm = MESHES[variant]
    return pod_config(f"sparrow_70b_{variant}", d_model=8192, n_heads=64, d_ff=32768, n_layers=80,
                      n_frozen_layers=64, devices=devices, hbm=hbm, tensor=TENSOR_PARALLEL,
                      value_hidden=2048, learning_rate=2e-6, batch_size=EPISODES_PER_STEP)


def get_sweep(variant: str = "v5p_512"):
    """RL learning rate x KL weight alpha (paper: 2e-6, 0.1): 4 pod runs.

    Every member starts from the same `train.init_from` (SFT) and reward-model workdirs,
    so the sweep varies no model key: `sparrow sweep` rejects one that does, since a
    checkpoint has one model shape (a frozen-trunk sweep needs its own lm/sft chain)."""
    from sparrow_jax.sweeps import product, sweep_axis
    return product(sweep_axis("train.learning_rate", [1e-6, 2e-6]),
                   sweep_axis("rl.alpha", [0.05, 0.1]))
