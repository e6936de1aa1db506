"""The experiment config schema, its defaults, loading and validation.

Every knob lives in `default_config()`. Experiment files (`experiments/<name>.py`)
start from it, change values and return it from `get_config(variant)`. A config
is validated once, before anything compiles: a key that the schema does not
know, a value of the wrong type, or a shape that cannot work is a `ConfigError`
naming the key.
"""
from __future__ import annotations

import importlib.util
import os
import re
from typing import Any, Iterable, Sequence

import ml_collections

from sparrow_jax.config_ranges import check_ranges

ROLES = ("policy", "value", "teacher", "pref_rm", "rule_rm")
STAGES = ("lm", "sft", "pref_rm", "rule_rm", "rl")
MESH_AXES = ("data", "fsdp", "tensor")
POSITION_KINDS = ("relative", "rotary")
MLP_KINDS = ("gelu", "gated_gelu", "swiglu")
ROTARY_SCALINGS = ("none", "linear", "llama3")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16")

# HBM per chip, used by `sparrow aot` to say whether a step fits.
HBM_BUDGET_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key."""


def default_logical_axis_rules() -> list[tuple[str, Any]]:
    """Logical axis name -> mesh axis (or tuple of axes, or None = replicated)."""
    return [
        ("batch", ("data", "fsdp")),
        ("length", None),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", None),
        ("vocab", "tensor"),
        ("layers", None),
        ("classes", None),
        ("value_hidden", "tensor"),
        ("rel_pos", None),
    ]


def model_defaults() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.vocab_size = 1024
    m.d_model = 64
    m.n_heads = 4
    m.head_dim = 16
    m.d_ff = 256
    m.n_layers = 4
    # The bottom n_frozen_layers form the shared trunk; each role owns the rest.
    m.n_frozen_layers = 2
    m.max_len = 256
    m.position = "relative"  # Transformer-XL relative attention, or "rotary".
    m.mlp = "gelu"  # dense GELU, "gated_gelu", or "swiglu" (SiLU-gated).
    m.tied_embeddings = False
    m.param_dtype = "float32"
    m.compute_dtype = "bfloat16"
    m.remat = "none"
    # nn.scan over each stack's layers (compile time flat in depth; stacked KV cache), or a
    # Python loop (per-layer KV buffers: faster decode on XLA:CPU for shallow stacks).
    m.scan_layers = True
    m.norm_eps = 1e-6
    m.init_std = 0.02
    m.rotary_base = 10000.0
    m.value_hidden = 64  # width of the value head's 2 hidden layers (2048 at 70B)
    m.value_layers = 2
    # Smeared keys (Olsson et al. 2022): each key is mixed with the previous token's
    # key by a learnt per-head weight, so one attention layer can match "the token
    # after an earlier copy of this one" -- copying (induction) is learnt far sooner.
    # A toy-scale aid; Chinchilla has plain keys.
    m.smeared_keys = False
    # The preference RM's Elo, read at the candidate's final eot, plus a learnt scale times
    # the mean log-likelihood its own LM head (started from the policy's) gives the final
    # agent turn [ours; the paper's RM is the Elo head alone]. Judging an answer against
    # the evidence then starts from the comparison copying already makes; a toy-scale RM
    # top does not learn it from the Elo head within the demo's budget (BUILD_NOTES).
    m.pref_rm_likelihood = False
    # Queries per block of the block-causal attention in a forward without a cache
    # (layers.query_blocks): block i reads only the keys up to its last query, so most
    # of the masked upper triangle is never computed. 0 = one block over every key.
    # 64 is XLA:CPU's best (it beat 32 and 128 for the 44M step at L = 512 and the tiny
    # hydra at L = 256); the pod configs use 512: at L = 2048, 64 would unroll 32 blocks
    # per layer, which quadruples compile time, and small blocks waste a TPU's matrix unit.
    m.causal_block = 64
    # Open-weight families (`sparrow import`; the defaults are the Chinchilla model):
    # key/value heads, each shared by n_heads // n_kv_heads query heads (grouped-query
    # attention; 1 = multi-query; 0 = n_heads, plain multi-head). With grouping, the KV
    # weights and cache use the logical axis 'kv_heads', replicated unless the mesh rules
    # name it (add ("kv_heads", "tensor") when n_kv_heads divides the tensor axis).
    m.n_kv_heads = 0
    # Gemma: RMSNorm multiplies by (1 + scale), and the embedding is scaled by sqrt(d_model).
    m.norm_unit_offset = False
    m.embed_scale = False
    # RoPE frequencies: "none" = base^(-2i/K); "linear" divides them by the factor; "llama3"
    # divides the low frequencies by it and blends the middle band (Llama 3.1's rope_scaling).
    m.rotary_scaling = "none"
    m.rotary_scaling_factor = 1.0
    m.rotary_low_freq_factor = 1.0
    m.rotary_high_freq_factor = 4.0
    m.rotary_original_max_len = 8192
    return m


def mesh_defaults() -> ml_collections.ConfigDict:
    mesh = ml_collections.ConfigDict()
    # Axis sizes; -1 (at most one) takes whatever the device count leaves.
    mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    mesh.logical_axis_rules = default_logical_axis_rules()
    # The sampler's rules, for its params and activations (sampling/layout.py); empty = the
    # training rules. Decoding in the training (FSDP) layout gathers the weights for every
    # generated token; the pod configs set model_parallel_decode_rules().
    mesh.decode_logical_axis_rules = []
    # `sparrow aot` simulates this many devices; 0 means use the real ones.
    mesh.aot_num_devices = 0
    mesh.hbm = "v5p"  # named HBM budget for `sparrow aot` (HBM_BUDGET_GIB)
    return mesh


def distributed_defaults() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # "auto": jax.distributed.initialize() on a TPU VM, nothing on one host.
    # "explicit": use coordinator/num_processes/process_id (local multi-process).
    # "off": never initialise.
    d.mode = "auto"
    d.coordinator = ""
    d.num_processes = 1
    d.process_id = 0
    return d


def train_defaults() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.stage = "sft"  # lm | sft | pref_rm | rule_rm | rl
    t.seed = 0
    t.batch_size = 8  # global, in sequences
    t.seq_len = 128
    t.steps = 100
    t.optimizer = "adamw"  # adamw | adafactor
    t.learning_rate = 1e-3
    t.warmup_steps = 10
    t.schedule = "cosine"  # cosine | constant
    t.weight_decay = 0.0
    t.grad_clip_norm = 1.0
    t.grad_accum_steps = 1
    # Workdir of an earlier stage whose latest checkpoint initialises this one:
    # the trunk and matching roles are copied, a new role's top layers start
    # from the source's policy top (heads start fresh). "" = random init.
    t.init_from = ""
    t.checkpoint_every = 100
    t.keep_checkpoints = 3
    t.async_checkpoint = True
    t.eval_every = 100  # 0 = only at the end
    t.eval_batches = 0  # 0 = the whole test split
    t.log_every = 10
    # After this many non-finite losses/gradients in a row, stop with an error.
    t.max_nonfinite_in_row = 5
    return t


def data_defaults() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # A directory made by `sparrow data toyworld` (or of the same layout): JSONL
    # files, tfds/ with the built datasets, lm.txt for the lm stage.
    d.dir = ""
    d.tfds_dir = ""  # "" = <dir>/tfds
    d.tokenizer = ""  # "" = <dir>/tokenizer.model, trained from <dir>/lm.txt if missing
    d.rules = ""  # "" = the packaged 23 rules
    d.num_candidates = 4  # preference candidates per comparison (K)
    d.rule_len = 64  # padded length of the rule question suffix (R)
    # sft training batches: whole dialogues packed first-fit into rows of train.seq_len
    # (attention stays within each; train.batch_size then counts rows). Evaluation rows
    # stay one dialogue each.
    d.pack_sft = False
    return d


def loss_defaults() -> ml_collections.ConfigDict:
    lo = ml_collections.ConfigDict()
    lo.pref_aux_weight = 0.5  # supported&plausible aux loss, averaged with the preference loss
    lo.pref_centring = 1e-3  # L2 penalty keeping the Elo centred
    return lo


def rl_defaults() -> ml_collections.ConfigDict:
    """The RL stage (docs/recipe.md section 6). The policy starts from `train.init_from`
    (the SFT workdir); the reward models come from their own workdirs."""
    r = ml_collections.ConfigDict()
    r.pref_rm_from = ""  # workdir of the pref_rm stage (required for rl)
    r.rule_rm_from = ""  # workdir of the rule_rm stage (required for rl)
    # Rollouts (`rl.rollout`): evidence mode always | never | choose | free.
    r.evidence = "free"
    r.max_prompt_len = 128  # prompt width in tokens; longer contexts are cut from the left
    r.max_new_tokens = 48  # per sampled turn
    r.temperature = 1.0
    r.top_p = 1.0
    r.top_k = 0  # 0 = off
    r.role_temperature = 1.0  # `free` mode's speaker draw
    # Self-play: prompt mixture, and the buffer of dialogues continued later.
    r.prompt_mix = ml_collections.ConfigDict({"eli5": 0.5, "human": 0.2, "red_team": 0.3})
    r.max_turns = 2  # agent turns per dialogue
    r.buffer_size = 256
    r.continue_prob = 0.25
    # Rewards: pref Elo normalised by the starting policy's samples, rule term, format penalty.
    r.normaliser_batches = 4  # batches of starting-policy rollouts that fit the Elo mean/std
    r.elo_weight = 1.0
    r.rule_aggregation = "mean_compliance"  # | mean_log_compliance
    r.rule_weight = 1.0
    # Rules the reward scores [ours]: "rated" = those the rule RM's training data rated
    # (data.dir/rule_ratings.train.jsonl; every rule if there is no such file), as evaluation
    # scores them; "all" = every rule. An RM's probabilities for rules it never saw a rating
    # of are noise: the toy world rates 8 of the 23, so "all" dilutes the rule term 23/8-fold
    # and scores 3x the rules.
    r.rule_scope = "rated"
    # Rules scored per step of the rule RM (lax.map over chunks): the shared dialogue cache is
    # copied to batch * rule_chunk rows; 0 = all rules at once. -1 = measured: on the first
    # RL batch each candidate (1, 2, 4, ... and all) is compiled and timed, the fastest kept
    # (process 0's choice; kept in the checkpoint, so a resumed run scores alike). A candidate
    # that fails to compile or run (e.g. out of memory) is skipped.
    r.rule_chunk = -1
    # Narrower widths for the rule scorer and the update [ours]: fractions of the full width
    # (`rl.lengths.sequence_length`), e.g. (0.5, 0.75). A step runs at the narrowest width
    # that holds its longest sequence, so padding that no row of the batch needs is never
    # computed; with rl.parallel_calls > 1 the step's rows are sorted by length and each part
    # runs at the narrowest width holding its own rows. Each width is one more compile of the
    # rule scorer and of the update, all made before the first step. () = every step at the
    # full width.
    r.length_buckets = ()
    # Narrower prompt widths for the rollouts' sampler calls [ours]: fractions of
    # rl.max_prompt_len, e.g. (0.25, 0.5). A call runs at the narrowest width that holds its
    # longest prompt (left-padded prompts lose only padding), so its prefill and every decode
    # step attend over fewer slots; each width is one more compile of each sampler program,
    # all made before the RL stage's first step (`sparrow eval` compiles one when a call first
    # needs it). Tokens are the full width's; log-probs may differ in float rounding.
    # () = every call at rl.max_prompt_len.
    r.prompt_buckets = ()
    # The rollout's sampler calls and the rule scorer as part-batch programs run side by side
    # on host threads [ours]: a CPU backend's cores run two small programs better than one
    # (`rl.parallel`); results equal one call's. The update then takes the same parts, rows
    # sorted by length, as length groups: a gradient program per part at its own width
    # (rl.length_buckets) and one optimizer update (`train.part_step`), the one-program
    # update's result up to float rounding. 0 = auto: 2 on a CPU backend with one process and
    # one device and train.grad_accum_steps 1, 1 elsewhere; > 1 needs one process and
    # train.grad_accum_steps 1.
    r.parallel_calls = 0
    # Input dtype of the weight projections in the stage's forward-only calls [ours]: the
    # rollouts' sampler and the reward models' scoring (whose trunk output the update reads).
    # Products accumulate in float32 and activations stay in model.compute_dtype; the
    # update's own forward and backward are untouched. bfloat16: rollouts draw from the policy
    # up to bf16 rounding of those inputs, as a bf16 rollout engine does (BUILD_NOTES, "bf16
    # projections"); float32: the update's arithmetic exactly; auto: bfloat16 where this
    # backend runs such matmuls at least 1.25x faster than float32, measured when the run
    # begins (`rl/projection.py`). A run keeps its choice when resumed; pin the key for runs
    # on different hosts that must match. No effect when model.compute_dtype is bfloat16.
    r.projection_dtype = "auto"
    r.format_penalty = 2.0  # [paper, GopherCite]
    # A2C with a KL anchor to the frozen teacher.
    r.kl_mode = "loss"  # loss: alpha * KL + (1 - alpha) * A2C | reward: KL penalty in the reward
    r.alpha = 0.1  # [paper, GopherCite]
    r.kl_coef = 0.1  # kl_mode=reward
    r.value_coef = 1.0
    # Step size of the value head over train.learning_rate [ours]. Adam moves a parameter
    # by about the learning rate per step, so at a policy's rate a freshly initialised
    # value head cannot reach the returns' scale within an RL run, and the advantage is
    # then about the return itself (no baseline).
    r.value_lr_scale = 1.0
    # Whether value-loss gradients reach the policy top the value head reads [ours; the
    # paper's value is an MLP on the policy's top]. True (the shared-torso actor-critic,
    # and this code's behaviour before the key): the value head's input features learn to
    # predict returns too. False: a stop_gradient on its input; only the head learns.
    r.value_grad_to_policy = True
    r.entropy_coef = 0.0
    return r


def default_config() -> ml_collections.ConfigDict:
    """Every key a config may have, with its default value."""
    c = ml_collections.ConfigDict()
    c.name = "default"
    c.model = model_defaults()
    c.mesh = mesh_defaults()
    c.distributed = distributed_defaults()
    c.train = train_defaults()
    c.data = data_defaults()
    c.loss = loss_defaults()
    c.rl = rl_defaults()
    return c


# The pod configs' RL context [ours], in tokens of a 32k SentencePiece vocabulary (about 4
# characters of English each, `rl.lengths.estimate_tokens`). The prompt of the agent's
# last turn (POD_RL_TURNS) holds the rendered DPC prompt (316 tokens by that estimate; 690
# with the toy world's 512-piece tokenizer), the earlier exchanges with evidence and the
# last one's user turn, search query and result: 1361 tokens with rl.lengths' per-turn
# budgets, in POD_PROMPT_TOKENS (tests/aot/test_rl_lengths.py; BUILD_NOTES, "RL lengths
# and decoding at pod size"). An agent turn is at most POD_AGENT_TURN_TOKENS, eot included.
POD_RL_TURNS = 3
POD_PROMPT_TOKENS = 1536
POD_AGENT_TURN_TOKENS = 128


def model_parallel_decode_rules() -> list[tuple[str, Any]]:
    """Decode layout: each weight split over fsdp by its model dimension (heads, MLP,
    vocabulary; embed replicated), the batch over data x tensor. No weight moves per
    generated token; each layer all-reduces [B / (data x tensor), D] over fsdp instead."""
    return [
        ("batch", ("data", "tensor")),
        ("length", None),
        ("embed", None),
        ("mlp", "fsdp"),
        ("heads", "fsdp"),
        ("kv", None),
        ("vocab", "fsdp"),
        ("layers", None),
        ("classes", None),
        ("value_hidden", "fsdp"),
        ("rel_pos", None),
    ]


def data_parallel_decode_rules() -> list[tuple[str, Any]]:
    """Decode layout: every weight replicated, the batch over every mesh axis."""
    return [(logical, ("data", "fsdp", "tensor") if logical == "batch" else None)
            for logical, _ in default_logical_axis_rules()]


DECODE_LAYOUTS = {"model_parallel": model_parallel_decode_rules,
                  "data_parallel": data_parallel_decode_rules}


def pod_config(name: str, *, d_model: int, n_heads: int, d_ff: int, n_layers: int,
               n_frozen_layers: int, devices: int, hbm: str, tensor: int = 1,
               microbatch: int = 0, value_hidden: int = 2048, learning_rate: float = 2e-6,
               batch_size: int = 256, decode: str = "model_parallel") -> ml_collections.ConfigDict:
    """A Chinchilla-family model on a TPU slice, as the pod experiment files share it.

    32k vocab, head size 128, context 2048, f32 params with bf16 compute and full remat,
    block-causal attention in blocks of 512 queries;
    mesh data 1 x fsdp (the rest of `devices` chips) x `tensor`; Adafactor with global-norm
    clip 1.0; stage rl. `microbatch` > 0 = at most this many sequences per batch shard
    (devices // tensor chips) per pass: the global batch is accumulated over
    max(1, batch_size // (microbatch * shards)) passes. RL: `batch_size` episodes per step
    (the sampler and the rule scorer take them at once), prompts of POD_PROMPT_TOKENS,
    agent turns of POD_AGENT_TURN_TOKENS, POD_RL_TURNS agent turns per dialogue; the
    sampler decodes in the `decode` layout (DECODE_LAYOUTS).
    """
    cfg = default_config()
    cfg.name = name
    m = cfg.model
    m.vocab_size, m.d_model, m.n_heads, m.head_dim, m.d_ff = 32000, d_model, n_heads, 128, d_ff
    m.n_layers, m.n_frozen_layers, m.max_len = n_layers, n_frozen_layers, 2048
    m.param_dtype, m.compute_dtype, m.remat = "float32", "bfloat16", "full"
    m.causal_block = 512  # see model_defaults; untuned on TPU (none here)
    m.value_hidden = value_hidden
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 1, -1, tensor
    cfg.mesh.aot_num_devices, cfg.mesh.hbm = devices, hbm
    t = cfg.train
    t.batch_size, t.seq_len, t.stage = batch_size, 2048, "rl"
    t.optimizer, t.learning_rate, t.grad_clip_norm = "adafactor", learning_rate, 1.0
    if microbatch:
        t.grad_accum_steps = max(1, batch_size // (microbatch * (devices // tensor)))
    r = cfg.rl
    r.max_prompt_len, r.max_new_tokens = POD_PROMPT_TOKENS, POD_AGENT_TURN_TOKENS
    r.max_turns = POD_RL_TURNS
    if decode not in DECODE_LAYOUTS:
        raise ValueError(f"decode={decode!r} is not one of {sorted(DECODE_LAYOUTS)}")
    cfg.mesh.decode_logical_axis_rules = DECODE_LAYOUTS[decode]()
    return cfg


# ----------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------

def load_experiment_module(path: str):
    """Import an experiment file (`get_config`, maybe `get_sweep`) by path."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location("_sparrow_experiment", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """Load `path/to/experiment.py[:variant]` and return its validated config.

    Raises ConfigError if the file is missing or has no `get_config`.
    """
    path, _, variant = spec.partition(":")
    module = load_experiment_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    try:
        cfg = module.get_config(variant) if variant else module.get_config()
    except (TypeError, KeyError, AttributeError, ValueError) as err:
        raise ConfigError(f"{spec}: get_config() failed: {err}") from err
    validate(cfg, source=spec)
    return cfg


_OVERRIDE_RE = re.compile(r"^--config\.([A-Za-z0-9_.]+)=(.*)$")


def apply_overrides(cfg: ml_collections.ConfigDict, args: Iterable[str]) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=v` strings; the value is parsed as the key's type."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    for arg in args:
        match = _OVERRIDE_RE.match(arg)
        if not match:
            raise ConfigError(f"bad override {arg!r}: expected --config.a.b=value")
        dotted, raw = match.groups()
        parent, leaf = _resolve_parent(cfg, dotted)
        current = parent[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"config key '{dotted}' is a section, not a value: set one of its "
                              f"keys, e.g. --config.{dotted}.{next(iter(current.keys()))}=...")
        value = _parse_like(current, raw, dotted)
        if isinstance(current, (list, tuple)) and not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{dotted}' takes a list, got {raw!r}")
        try:
            parent[leaf] = value
        except TypeError as err:
            raise ConfigError(f"config key '{dotted}': cannot set {raw!r} ({err})") from None
    validate(cfg)
    return cfg


def _resolve_parent(cfg, dotted: str):
    keys = dotted.split(".")
    node = cfg
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            raise ConfigError(f"unknown config key '{'.'.join(keys[:i + 1])}'")
        node = node[key]
    if not isinstance(node, ml_collections.ConfigDict) or keys[-1] not in node:
        raise ConfigError(f"unknown config key '{dotted}'")
    return node, keys[-1]


def _parse_like(current: Any, raw: str, key: str) -> Any:
    try:
        if isinstance(current, bool):
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, str):
            return raw
        import ast
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError) as err:
        raise ConfigError(
            f"config key '{key}': cannot parse {raw!r} as {type(current).__name__}") from err


# ----------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------

def validate(cfg: ml_collections.ConfigDict, source: str = "config", *,
             training: bool = False) -> None:
    """Check keys against the schema, value types, and shapes. Raises ConfigError.

    training=True adds the checks of a config about to TRAIN its `train.stage` (the rl
    update step and the launcher ask for them; evaluation and chat, which read the same
    keys from a checkpoint's config, do not): for rl, rollouts must sample from the
    policy itself, since the A2C update takes the sampler's tokens as the policy's own
    draws. Sampling at rl.temperature != 1, rl.top_p < 1 or rl.top_k > 0 (or, with
    rl.evidence='free', rl.role_temperature != 1) draws from another distribution, and
    the policy gradient would be biased (docs/recipe.md section 6).
    """
    _check_keys(cfg, default_config(), prefix="", source=source)
    check_ranges(cfg, ConfigError)
    m = cfg.model
    _choice(m.position, POSITION_KINDS, "model.position")
    _choice(m.mlp, MLP_KINDS, "model.mlp")
    _choice(m.remat, REMAT_POLICIES, "model.remat")
    _choice(m.param_dtype, DTYPES, "model.param_dtype")
    _choice(m.compute_dtype, DTYPES, "model.compute_dtype")
    for key in ("vocab_size", "d_model", "n_heads", "head_dim", "d_ff", "n_layers", "max_len"):
        if m[key] <= 0:
            raise ConfigError(f"model.{key} must be positive, got {m[key]}")
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}")
    if not 0 <= m.n_frozen_layers < m.n_layers:
        raise ConfigError(
            f"model.n_frozen_layers={m.n_frozen_layers} must be in [0, model.n_layers="
            f"{m.n_layers}): every role needs at least one layer of its own")
    if m.causal_block < 0:
        raise ConfigError(f"model.causal_block must be >= 0 (0 = off), got {m.causal_block}")
    _choice(m.rotary_scaling, ROTARY_SCALINGS, "model.rotary_scaling")
    if m.n_kv_heads < 0 or (m.n_kv_heads and m.n_heads % m.n_kv_heads):
        raise ConfigError(f"model.n_kv_heads={m.n_kv_heads} must divide model.n_heads="
                          f"{m.n_heads} (0 = n_heads)")
    if m.position == "rotary" and m.head_dim % 2:
        raise ConfigError(f"model.head_dim={m.head_dim} must be even for rotary positions")
    shape = dict(cfg.mesh.shape)
    if set(shape) != set(MESH_AXES):
        raise ConfigError(f"mesh.shape must have exactly the axes {MESH_AXES}, got {sorted(shape)}")
    if sum(v == -1 for v in shape.values()) > 1:
        raise ConfigError("mesh.shape: at most one axis may be -1")
    for axis, size in shape.items():
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.shape.{axis} must be positive or -1, got {size}")
    if cfg.mesh.hbm not in HBM_BUDGET_GIB:
        raise ConfigError(f"mesh.hbm={cfg.mesh.hbm!r} is not one of {sorted(HBM_BUDGET_GIB)}")
    _check_axis_rules(cfg.mesh.logical_axis_rules, "mesh.logical_axis_rules")
    _check_axis_rules(cfg.mesh.decode_logical_axis_rules, "mesh.decode_logical_axis_rules")
    _choice(cfg.distributed.mode, ("auto", "explicit", "off"), "distributed.mode")
    _choice(cfg.train.optimizer, ("adamw", "adafactor"), "train.optimizer")
    _choice(cfg.train.schedule, ("cosine", "constant"), "train.schedule")
    _choice(cfg.train.stage, STAGES, "train.stage")
    _validate_rl(cfg.rl)
    if training and cfg.train.stage == "rl":
        r = cfg.rl
        off_policy = [f"rl.{key}={r[key]!r} (must be {on})" for key, on in (
            ("temperature", 1.0), ("top_p", 1.0), ("top_k", 0)) if r[key] != on]
        if r.evidence == "free" and r.role_temperature != 1.0:
            off_policy.append(f"rl.role_temperature={r.role_temperature!r} (must be 1.0 with "
                              f"rl.evidence='free')")
        if off_policy:
            raise ConfigError(
                f"{source}: train.stage='rl' trains on-policy A2C, but {', '.join(off_policy)} "
                f"samples from another distribution than the policy's. Set them back to train; "
                f"evaluation and chat may still use other values.")
    if cfg.train.batch_size <= 0 or cfg.train.grad_accum_steps <= 0:
        raise ConfigError("train.batch_size and train.grad_accum_steps must be positive")
    if cfg.train.batch_size % cfg.train.grad_accum_steps:
        raise ConfigError(
            f"train.grad_accum_steps={cfg.train.grad_accum_steps} does not divide "
            f"train.batch_size={cfg.train.batch_size}")


def _check_axis_rules(rules, key: str) -> None:
    for rule in rules:
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise ConfigError(f"{key}: entry {rule!r} is not (logical, mesh_axes)")
        targets = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
        for target in targets:
            if target is not None and target not in MESH_AXES:
                raise ConfigError(f"{key}: {rule[0]!r} maps to unknown mesh axis {target!r}")


def _validate_rl(r) -> None:
    _choice(r.evidence, ("always", "never", "choose", "free"), "rl.evidence")
    _choice(r.rule_aggregation, ("mean_compliance", "mean_log_compliance"), "rl.rule_aggregation")
    _choice(r.rule_scope, ("rated", "all"), "rl.rule_scope")
    _choice(r.kl_mode, ("loss", "reward"), "rl.kl_mode")
    _choice(r.projection_dtype, ("auto",) + DTYPES, "rl.projection_dtype")
    for key in ("max_prompt_len", "max_new_tokens", "max_turns", "normaliser_batches"):
        if r[key] <= 0:
            raise ConfigError(f"config key 'rl.{key}' must be positive, got {r[key]}")
    if r.max_prompt_len < 4:
        raise ConfigError(f"config key 'rl.max_prompt_len' must be >= 4, got {r.max_prompt_len}")
    for key in ("temperature", "role_temperature", "value_lr_scale"):
        if r[key] <= 0:
            raise ConfigError(f"config key 'rl.{key}' must be positive, got {r[key]}")
    if r.parallel_calls < 0:
        raise ConfigError(f"config key 'rl.parallel_calls' must be >= 0 (0 = auto), "
                          f"got {r.parallel_calls}")
    if r.rule_chunk < -1:
        raise ConfigError(f"config key 'rl.rule_chunk' must be >= -1 (0 = all rules at once, "
                          f"-1 = measured), got {r.rule_chunk}")
    for key in ("length_buckets", "prompt_buckets"):
        fractions = r[key]
        if not isinstance(fractions, (tuple, list)) or not all(
                isinstance(f, (int, float)) and 0 < f < 1 for f in fractions):
            raise ConfigError(f"config key 'rl.{key}' must be fractions of the full width "
                              f"in (0, 1), e.g. (0.5, 0.75); got {fractions!r}")
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"config key 'rl.top_p' must be in (0, 1], got {r.top_p}")
    if not 0 <= r.alpha <= 1 or not 0 <= r.continue_prob <= 1:
        raise ConfigError("config keys 'rl.alpha' and 'rl.continue_prob' must be in [0, 1]")
    if r.top_k < 0 or r.buffer_size < 0:
        raise ConfigError("config keys 'rl.top_k' and 'rl.buffer_size' must be >= 0")
    if any(w < 0 for w in r.prompt_mix.values()) or not any(w > 0 for w in r.prompt_mix.values()):
        raise ConfigError(f"config key 'rl.prompt_mix' needs weights >= 0, one positive; got "
                          f"{dict(r.prompt_mix)}")


def resolve_mesh_shape(shape: dict, num_devices: int) -> dict:
    """Fill in a -1 axis and check the product equals the device count."""
    shape = dict(shape)
    known = 1
    for axis, size in shape.items():
        if size != -1:
            known *= size
    free = [axis for axis, size in shape.items() if size == -1]
    if free:
        if num_devices % known:
            raise ConfigError(
                f"mesh.shape {shape}: fixed axes (product {known}) do not divide "
                f"the {num_devices} devices")
        shape[free[0]] = num_devices // known
    total = 1
    for size in shape.values():
        total *= size
    if total != num_devices:
        raise ConfigError(
            f"mesh.shape {shape} has {total} devices but {num_devices} are available")
    return {axis: shape[axis] for axis in MESH_AXES}


def _check_keys(cfg, schema, prefix: str, source: str) -> None:
    for key in cfg.keys():
        dotted = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"{source}: unknown config key '{dotted}'")
        value, expected = cfg[key], schema[key]
        if isinstance(expected, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"{source}: config key '{dotted}' must be a section")
            # mesh.shape is a free-form section checked by validate() itself.
            if dotted != "mesh.shape":
                _check_keys(value, expected, dotted + ".", source)
        elif not _type_ok(value, expected):
            raise ConfigError(
                f"{source}: config key '{dotted}' must be {type(expected).__name__}, "
                f"got {value!r}")


def _type_ok(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool):
        return isinstance(value, bool)
    if isinstance(expected, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(expected, str):
        return isinstance(value, str)
    if isinstance(expected, (list, tuple)):
        return isinstance(value, (list, tuple))
    return True


def _choice(value: Any, allowed: Sequence[str], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}' = {value!r} is not one of {list(allowed)}")
