"""Sparrow recipe from Llama 3.2 1B's open weights (`sparrow import`), on a TPU VM or a slice.

Shape: meta-llama/Llama-3.2-1B's config.json (HF_CONFIG below; the model keys are what
`sparrow_jax.hf.families.model_overrides` makes of it, as `sparrow import` does): 16 layers,
d_model 2048, 32 query heads of 64 on 8 key/value heads (grouped-query), SwiGLU FFW 8192,
128256-id vocabulary, RoPE base 500000 with Llama 3.1's scaling (factor 32, low / high
frequency factors 1 / 4, original context 8192), LM head tied to the embedding: 1.24e9
parameters (0.26e9 of them the embedding). The bottom 12 of 16 layers are the frozen shared
trunk (`sparrow import`'s default, Sparrow's 64 of 80), so each role's own top is 4 layers.

Tokenizer: Llama 3's is a byte-level BPE `tokenizer.json`, which `sparrow import` refuses (only
SentencePiece models are supported). Import the weights alone (move the tokenizer files out of
the directory) and give the runs a SentencePiece model with Llama 3's ids as
`--config.data.tokenizer`, else the recipe cannot tokenise the data with the model's ids. The
vocabulary then stays 128256 (VOCAB_SIZE) as long as that model's ids, Sparrow's control ids
included, fit in it. This config is the shape for `sparrow aot` and for runs with such a
tokenizer; gemma_2b.py is the family whose tokenizer the import takes as is.

Start: `sparrow import --hf LLAMA_DIR --workdir IMPORTED` (default --n-frozen-layers 12), then
every stage with `--config.train.init_from` (launch/README.md, "Starting from open weights");
`train.init_from` below is that placeholder.

Variants are named after the TPU type. v5e counts chips (v5e-8 = 8 chips, one host; v5e-32 = 32
chips on 4 hosts); v4 and v5p count TensorCores, 2 per chip (v4-8 and v5p-8 = 4 chips, one
host). JAX sees one device per chip. The mesh is FSDP over every chip. Default: `v5e_8`.

Sizes, and why: the stage is rl (as the pod configs): 64 episodes per step, sampled and
rule-scored at once, prompts of 1536 tokens and agent turns of 128 (`pod_config`). The update
runs microbatches of MICROBATCH_PER_DEVICE sequences per chip: a 2048-token sequence's logits
over 128256 ids are 0.5 GiB in bfloat16 (1 GiB as float32 log-probabilities), the largest
activation, made by the policy and by the teacher. The sampler decodes model-parallel (weights
split over fsdp by heads / MLP / vocabulary), as gemma_2b.py, and here also by the 8 key/value
heads, which splits the KV cache (64 episodes x 1672 positions x 16 layers: 3.5 GB in bfloat16)
over 8 chips: replicated, it put the v5e-8 sampler over 16 GiB (16.32). Full rematerialisation, float32
params with bfloat16 compute, Adafactor. `sparrow aot --config experiments/llama3_2_1b.py:<variant>`
reports each step's per-chip memory (README, the open-weight table).
"""
from sparrow_jax.hf.pod import MESHES, open_weight_config, open_weight_sweep  # noqa: F401 (the variants)

# meta-llama/Llama-3.2-1B config.json (the fields the import reads).
HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
}
VOCAB_SIZE = HF_CONFIG["vocab_size"]
N_FROZEN_LAYERS = 12  # sparrow_jax.hf.importer.default_frozen_layers(16)
MICROBATCH_PER_DEVICE = 2
IMPORTED = "runs/llama3_2_1b/imported"   # placeholder: the `sparrow import --workdir` directory


def get_config(variant: str = "v5e_8"):
    # Decoding splits the 8 key/value heads (weights and cache) over fsdp like the 32 query
    # heads; without it every chip holds the whole batch's cache (replicated 'kv_heads').
    return open_weight_config("llama3_2_1b", HF_CONFIG, variant, n_frozen_layers=N_FROZEN_LAYERS,
                              vocab_size=VOCAB_SIZE, microbatch=MICROBATCH_PER_DEVICE,
                              imported=IMPORTED, decode_rules=[("kv_heads", "fsdp")])


def get_sweep(variant: str = "v5e_8"):
    """RL learning rate x KL weight alpha (`sparrow_jax.hf.pod.open_weight_sweep`)."""
    return open_weight_sweep()
