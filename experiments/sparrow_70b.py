"""Sparrow at Chinchilla 70B on a TPU pod (SPARROW.md section 3).

80 layers, d_model 8192, 64 heads of 128, FFW 32768, 32k vocab, context 2048,
Transformer-XL relative attention; the bottom 64 layers are the frozen shared trunk.
Variants are named after the TPU type, whose number counts TensorCores; JAX sees
one device per chip, so v5p-512 is 256 devices, v5p-256 128, v5p-128 64 and
v4-256 128. Default: `v5p_512` (256 chips).
"""
from sparrow_jax.config import default_config

MESHES = {
    # name: (devices = chips, HBM budget name); every mesh is fsdp x tensor=4.
    "v5p_512": (256, "v5p"),
    "v5p_256": (128, "v5p"),
    "v5p_128": (64, "v5p"),
    "v4_256": (128, "v4"),
}
TENSOR_PARALLEL = 4


def get_config(variant: str = "v5p_512"):
    if variant not in MESHES:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(MESHES)}")
    devices, hbm = MESHES[variant]
    cfg = default_config()
    cfg.name = f"sparrow_70b_{variant}"
    m = cfg.model
    m.vocab_size = 32000
    m.d_model = 8192
    m.n_heads = 64
    m.head_dim = 128
    m.d_ff = 32768
    m.n_layers = 80
    m.n_frozen_layers = 64
    m.max_len = 2048
    m.param_dtype = "float32"
    m.compute_dtype = "bfloat16"
    m.remat = "full"
    m.value_hidden = 2048
    cfg.mesh.shape.data = 1
    cfg.mesh.shape.fsdp = -1  # fills the pod's chips
    cfg.mesh.shape.tensor = TENSOR_PARALLEL
    cfg.mesh.aot_num_devices = devices
    cfg.mesh.hbm = hbm
    cfg.train.batch_size = 256
    cfg.train.seq_len = 2048
    cfg.train.optimizer = "adafactor"
    cfg.train.learning_rate = 2e-6
    cfg.train.grad_clip_norm = 1.0
    cfg.train.stage = "rl"
    return cfg


def get_sweep(variant: str = "v5p_512"):
    """Learning rate x size of the frozen trunk (64 of 80 layers in the paper): 4 pod runs."""
    from sparrow_jax.sweeps import product, sweep_axis
    return product(sweep_axis("train.learning_rate", [1e-6, 2e-6]),
                   sweep_axis("model.n_frozen_layers", [64, 72]))
