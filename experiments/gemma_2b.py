"""Sparrow recipe from Gemma 2B's open weights (`sparrow import`), on a TPU VM or a small slice.

Shape: google/gemma-2b's config.json (HF_CONFIG below; the model keys are what
`sparrow_jax.hf.families.model_overrides` makes of it, as `sparrow import` does): 18 layers,
d_model 2048, 8 query heads of 256 on 1 key/value head (multi-query), gated-GELU FFW 16384,
256000-piece SentencePiece vocabulary, RMSNorm scale (1 + w), embedding scaled by sqrt(2048),
RoPE base 10000, LM head tied to the embedding: 2.51e9 parameters (0.52e9 of them the
embedding). The bottom 14 of 18 layers are the frozen shared trunk (`sparrow import`'s default,
Sparrow's 64 of 80 rounded down), so each role's own top is 4 layers (0.44e9).

Start: `sparrow import --hf GEMMA_DIR --workdir IMPORTED` (default --n-frozen-layers 14: the
same split as here), then every stage with `--config.train.init_from`: sft from IMPORTED, the
reward models from the sft workdir, rl from the sft workdir and both RM workdirs
(launch/README.md, "Starting from open weights"). `train.init_from` below is that placeholder.
The data dir must have no tokenizer.model: the runs take the one the import stored (Gemma's own
SentencePiece model; Sparrow's role and control ids are appended to it, so the vocabulary the
import writes is VOCAB_SIZE, see below).

Variants are named after the TPU type. v5e counts chips (v5e-8 = 8 chips, one host; v5e-32 = 32
chips on 4 hosts); v4 and v5p count TensorCores, 2 per chip (v4-8 and v5p-8 = 4 chips, one
host). JAX sees one device per chip. The mesh is FSDP over every chip (8 heads and one KV head
do not split over a tensor axis worth having at this size). Default: `v5e_8`.

Sizes, and why: the stage is rl (as the pod configs): 64 episodes per step
(`sparrow_jax.hf.pod`), sampled and rule-scored at once, prompts of 1536 tokens and agent turns of
128 (`pod_config`; Gemma's 256k vocabulary needs fewer tokens for the same text than the 32k
one those were measured with, so they are generous). The update runs microbatches of
MICROBATCH_PER_DEVICE sequence per chip: a 2048-token sequence's logits over 256000 pieces are
1 GiB in bfloat16 (2 GiB as float32 log-probabilities), the largest activation by far, and the
policy and the teacher each make one. The sampler decodes model-parallel (weights split over
fsdp by heads / MLP / vocabulary; none gathered per token): data-parallel decoding would hold a
float32 copy of the 2.5e9-parameter policy (10 GB) on every chip. Earlier stages
(`--config.train.stage=sft`, ...) keep batch 64 and accumulate the same way. Full
rematerialisation, float32 params with bfloat16 compute, Adafactor (factored second moments:
its state is small beside the params). `sparrow aot --config experiments/gemma_2b.py:<variant>`
reports each step's per-chip memory (README, the open-weight table).
"""
from sparrow_jax.hf.pod import MESHES, open_weight_config, open_weight_sweep  # noqa: F401 (the variants)

# google/gemma-2b config.json (the fields the import reads).
HF_CONFIG = {
    "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "vocab_size": 256000,
    "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
    "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "tie_word_embeddings": True, "attention_bias": False,
}
# Sparrow's control pieces Gemma's SentencePiece model lacks (the four roles, eot, rule: its
# pad / bos / eos are CONTROL pieces already) are appended after its 256000 ids.
APPENDED_CONTROL_IDS = 6
VOCAB_SIZE = HF_CONFIG["vocab_size"] + APPENDED_CONTROL_IDS
N_FROZEN_LAYERS = 14  # sparrow_jax.hf.importer.default_frozen_layers(18)
MICROBATCH_PER_DEVICE = 1
IMPORTED = "runs/gemma_2b/imported"   # placeholder: the `sparrow import --workdir` directory


def get_config(variant: str = "v5e_8"):
    return open_weight_config("gemma_2b", HF_CONFIG, variant, n_frozen_layers=N_FROZEN_LAYERS,
                              vocab_size=VOCAB_SIZE, microbatch=MICROBATCH_PER_DEVICE,
                              imported=IMPORTED)


def get_sweep(variant: str = "v5e_8"):
    """RL learning rate x KL weight alpha (`sparrow_jax.hf.pod.open_weight_sweep`)."""
    return open_weight_sweep()
