"""Sparrow recipe at a ~7B Chinchilla-family shape, for mid-sized runs on a TPU slice.

Shape: our choice, not a published row. docs/recipe.md section 3 lists no Chinchilla
7B; this takes the 9.3B row's width (d_model 4096, FFW 16384 = 4 x d_model, 32
heads of 128) at 32 layers instead of 42, keeping the family's conventions
(head size 128, 4x FFW, RMSNorm pre-norm, Transformer-XL relative attention),
with Sparrow's 32k vocab and context 2048. The bottom 26 of 32 layers (0.8 as in
Sparrow's 64 of 80, rounded) are the frozen shared trunk. Trunk + policy is about
7.24e9 parameters: 6.98e9 in the layers (each 5 D^2 for q, k, v, out and the
relative-position projection, plus 2 D F for the MLP) and 2 x 131e6 in the
untied embedding [V, D] and unembedding [D, V].

Variants are named after the TPU type, whose number counts TensorCores; JAX sees
one device per chip, so v5p-32 and v4-32 are 16 devices and v5p-64 is 32. Meshes
are fsdp x tensor=TENSOR_PARALLEL, so the batch splits over devices / 4 shards.
Default: `v5p_32`.

The stage is rl: train.batch_size = EPISODES_PER_STEP, sampled and rule-scored at
once, so it is what the sampler fits on v4-32 (`sparrow aot`: 256 episodes need 50 GiB
per chip); the update takes at most MICROBATCH_PER_SHARD sequences per batch shard per
pass. Prompts of 1536 tokens, agent turns of 128 (`pod_config`); the sampler decodes
model-parallel. The earlier stages (`--config.train.stage=sft`, ...) may raise
`--config.train.batch_size` (256 sequences of 2048 tokens: 4 microbatches with
`--config.train.grad_accum_steps=4` on 16 chips).
"""
from sparrow_jax.config import pod_config

MESHES = {
    # name: (devices = chips, HBM budget name)
    "v5p_32": (16, "v5p"),
    "v5p_64": (32, "v5p"),
    "v4_32": (16, "v4"),
}
TENSOR_PARALLEL = 4
N_LAYERS = 32
N_FROZEN_LAYERS = round(0.8 * N_LAYERS)  # 26
EPISODES_PER_STEP = 64  # RL episodes per update
MICROBATCH_PER_SHARD = 16  # sequences per batch shard (TENSOR_PARALLEL chips) per pass


def get_config(variant: str = "v5p_32"):
    if variant not in MESHES:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(MESHES)}")
    devices, hbm = MESHES[variant]
    return pod_config(f"chinchilla_7b_{variant}", d_model=4096, n_heads=32, d_ff=16384,
                      n_layers=N_LAYERS, n_frozen_layers=N_FROZEN_LAYERS, devices=devices, hbm=hbm,
                      tensor=TENSOR_PARALLEL, microbatch=MICROBATCH_PER_SHARD, learning_rate=5e-6,
                      batch_size=EPISODES_PER_STEP)


def get_sweep(variant: str = "v5p_32"):
    """RL learning rate x KL weight alpha: 4 runs from one shared SFT checkpoint (no model
    key varies: `sparrow sweep` rejects that with a shared `train.init_from`)."""
    from sparrow_jax.sweeps import product, sweep_axis
    return product(sweep_axis("train.learning_rate", [2e-6, 5e-6]),
                   sweep_axis("rl.alpha", [0.05, 0.1]))
