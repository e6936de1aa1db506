"""Tiny CPU config: the toy world end to end on this machine in minutes.

Variants (`experiments/tiny_cpu.py:<stage>`) pick the training stage: lm, sft,
pref_rm, rule_rm, rl. Point `data.dir` at a toy world (`sparrow data toyworld`),
and for every stage after lm set `train.init_from` to the earlier stage's workdir
(lm -> sft -> pref_rm / rule_rm: the reward models start from the SFT policy's
top and share the lm trunk); rl starts from sft and reads the reward models from
`rl.pref_rm_from` / `rl.rule_rm_from`. `sparrow demo` wires all of this up.
"""
from sparrow_jax.config import default_config

# stage -> (steps, learning rate, batch size in rows: sequences, or packed rows for sft)
STAGE_SCHEDULES = {
    "lm": (300, 3e-3, 16),
    # copying the value from the evidence emerges after ~600 steps; 8 packed rows hold
    # ~19 dialogues (data.pack_sft)
    "sft": (900, 3e-3, 8),
    "pref_rm": (200, 2e-3, 32),  # held-out accuracy 0.90 at 200 steps, 0.90 at 400
    "rule_rm": (250, 2e-3, 16),  # macro AUC 0.97 at 300 steps
    "rl": (100, 1e-4, 16),
}


def get_config(variant: str = "sft"):
    if variant not in STAGE_SCHEDULES:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(STAGE_SCHEDULES)}")
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
    # Looped, not scanned, layers: with stacks of two layers scanning saves no compile time,
    # and on XLA:CPU a scanned layer copies its slice of the stacked KV cache at every
    # decode step (cache.py). Looped, the RL step ran 13% faster (BUILD_NOTES).
    m.scan_layers = False
    m.value_hidden = 128
    # Copying a name or value from the context is what answering from a search result
    # needs; with smeared keys the tiny trunk learns it within the demo's budget.
    m.smeared_keys = True
    # The preference RM adds its LM head's mean log-likelihood of the judged turn to the
    # Elo: without it, the 2-layer RM top never learnt (in up to 1200 steps) to tell an
    # answer that misreads the evidence from a right one; the SFT policy's likelihood did.
    m.pref_rm_likelihood = True
    steps, learning_rate, batch_size = STAGE_SCHEDULES[variant]
    t = cfg.train
    t.stage = variant
    t.steps = steps
    t.learning_rate = learning_rate
    t.batch_size = batch_size
    # Toy dialogues have at most 111 tokens (comparisons 98, rated dialogues 93), so 128
    # holds every one; the lm stage packs text, so its rows have no padding to save.
    t.seq_len = 192 if variant == "lm" else 128
    t.warmup_steps = 20
    t.checkpoint_every = 100
    t.eval_every = 0
    t.log_every = 25
    if variant == "rl":
        t.log_every = 2  # the reward/KL curves of the demo's plot
    # One rule per step of the rule RM: what rl.rule_chunk=-1 (the default: measure at the
    # start of a run) picks on this 2-core CPU for 16 dialogues x 8 rules (1: 0.151 s, 2: 0.25 s,
    # all at once: 0.215 s, idle host; looped layers: 1: 0.134 s, 2: 0.19, 4: 0.18, all: 0.19);
    # fixed here so that short runs and tests skip the measurement's extra compiles.
    cfg.rl.rule_chunk = 1
    # A toy episode is about 60 tokens when the agent answers directly and about 135 after
    # a search, of the 184 an RL batch can need: most batches fit in 144 (0.75 x 184), where
    # the rule scorer and the update cost about a fifth less (BUILD_NOTES, session 14), and
    # the shorter of the two length-grouped parts (`rl.parallel_calls`) mostly fits in 72
    # (BUILD_NOTES, session 21).
    cfg.rl.length_buckets = (0.375, 0.75)
    # Most toy prompts are a fresh User turn of 5-25 tokens: a sampler call whose prompts all
    # fit in 32 or 64 of the 128 prompt slots runs there (BUILD_NOTES, session 18).
    cfg.rl.prompt_buckets = (0.25, 0.5)
    # The toy tokenizer (1024 pieces learnt from toy text) spends up to ~70 tokens
    # on a rule question.
    cfg.data.rule_len = 96
    # A toy dialogue averages 47 tokens: one per row of 128 would be 63% padding.
    cfg.data.pack_sft = True
    return cfg


def get_sweep(variant: str = "sft"):
    """Learning rate x depth of the frozen shared trunk: 4 runs (`sparrow sweep`).

    Each member needs its own model, so run it from scratch (`tiny_cpu.py:lm`) or give
    each member its own init_from; with one shared `--config.train.init_from` the sweep
    is rejected before anything runs (model.n_frozen_layers differs between members)."""
    from sparrow_jax.sweeps import product, sweep_axis
    return product(sweep_axis("train.learning_rate", [1e-3, 3e-4]),
                   sweep_axis("model.n_frozen_layers", [1, 2]))
