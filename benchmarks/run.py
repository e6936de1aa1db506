"""Speed measurements on this machine (not tests).

    python benchmarks/run.py [--json] [--quick] [--only name,name]

A registry of named measurements; each is `fn(results, quick) -> dict of numbers`
and may read earlier results (e.g. MFU needs the matmul peak). `--json` prints
one object merging every measurement's keys; `--quick` runs toy sizes (smoke
test only: the figures are meaningless). Ratios are measured within one run
with the variants interleaved and the best of several repeats taken, so load
from other processes on the machine mostly cancels out.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASUREMENTS: dict[str, Callable[..., dict]] = {}
# `--quick` model width (smoke test only).
QUICK_MODEL = {"d_model": 32, "n_heads": 2, "head_dim": 16, "d_ff": 64, "value_hidden": 32}


def measurement(name: str):
    def register(fn):
        MEASUREMENTS[name] = fn
        return fn
    return register


# ---------------------------------------------------------------------------- helpers

def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _interleaved_best_seconds(variants: dict[str, Callable[[], object]],
                              repeats: int) -> dict[str, float]:
    """Best wall seconds of each variant: one untimed warm-up call each (compiles),
    then `repeats` rounds calling every variant once in turn (blocking on results)."""
    import jax
    for fn in variants.values():
        jax.block_until_ready(fn())
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _tiny_config(quick: bool, stage: str = "sft", **model_overrides):
    """experiments/tiny_cpu.py (f32); `quick` shrinks the model for the smoke test."""
    from sparrow_jax.config import load_experiment
    cfg = load_experiment(os.path.join(ROOT, "experiments", "tiny_cpu.py") + f":{stage}")
    if quick:
        model_overrides = {**QUICK_MODEL, **model_overrides}
    for key, value in model_overrides.items():
        setattr(cfg.model, key, value)
    return cfg


def _random_tokens(rows: int, length: int, vocab_size: int, seed: int = 0):
    """int32 [rows, length] of ids >= 16 (clear of the tokenizer's control ids)."""
    import numpy as np
    rs = np.random.RandomState(seed)
    return rs.randint(16, vocab_size, (rows, length)).astype(np.int32)


def _rule_suffixes():
    """The 23 packaged rules rendered as rule-RM suffixes with a tokenizer trained
    here (BPE, 1024 pieces) on the packaged rule and prompt texts: (tokens_RxQ, valid_RxQ).
    Q is the longest suffix rounded up to 16, as the rule_rm pipeline pads it."""
    import glob
    from sparrow_jax.dialogue.rules import load_rules
    from sparrow_jax.dialogue.tokenizer import train_tokenizer
    from sparrow_jax.rewards.rule_scoring import prepare_rule_suffixes
    rules = load_rules()
    texts = [rule.text for rule in rules]
    for path in sorted(glob.glob(os.path.join(ROOT, "sparrow_jax", "resources", "prompts", "*"))):
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(texts, os.path.join(tmp, "tok.model"), vocab_size=1024)
    return prepare_rule_suffixes(rules, tokenizer)


def _no_eot_ids(eot_id: int = 8):
    """TokenIds that ban every control id, eot included, so every decode step runs."""
    from sparrow_jax.sampling.sampler import TokenIds
    return TokenIds(eot_id=eot_id, pad_id=0, banned_ids=tuple(range(16)))


# ---------------------------------------------------------------------------- measurements

def _matmul_fn(n: int, dtype: str):
    """A jitted n x n matmul on random inputs of `dtype` (f32 accumulation): () -> array."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return lambda: matmul(a, b)


@measurement("matmul_peak")
def matmul_peak(results: dict, quick: bool = False, repeats: int = 3) -> dict:
    """Best-of-`repeats` n x n matmul, jitted; FLOP/s = 2 n^3 / seconds.

    `matmul_peak_flops`: f32 inputs; `matmul_peak_flops_bf16`: bf16 inputs, f32 accumulation.
    """
    n = 256 if quick else 4096
    seconds = _interleaved_best_seconds({d: _matmul_fn(n, d) for d in ("float32", "bfloat16")},
                                        repeats)
    return {"matmul_peak_flops": 2.0 * n**3 / seconds["float32"],
            "matmul_peak_flops_bf16": 2.0 * n**3 / seconds["bfloat16"], "matmul_size": n}


TRAIN_DTYPES = ("float32", "bfloat16")
# Chinchilla 44M (SPARROW.md section 3): d_model 512, ffw 2048, 8 heads of 64, 8 layers,
# with Sparrow's 32k vocabulary and relative positions (tiny_cpu supplies the rest).
CHINCHILLA_44M = {"vocab_size": 32000, "d_model": 512, "d_ff": 2048, "n_heads": 8,
                  "head_dim": 64, "n_layers": 8, "n_frozen_layers": 0}
# How the 44M model trains fastest here (see train_step).
TRAIN_REMAT = "full"


def _train_setup(quick: bool, dtype: str, batch_size: int, seq_len: int, stage: str = "lm"):
    """(jitted update step, state, batch, model FLOPs per step) for the Chinchilla 44M
    shape on 1 device (`quick`: a toy width and vocabulary)."""
    import jax
    from sparrow_jax import sharding as shd
    from sparrow_jax.aot import analytic_flops
    from sparrow_jax.train import stages
    shape = {**CHINCHILLA_44M, **({"vocab_size": 1024, **QUICK_MODEL} if quick else {})}
    cfg = _tiny_config(False, stage, compute_dtype=dtype, max_len=seq_len, remat=TRAIN_REMAT,
                       **shape)
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    setup = stages.build_stage(cfg, mesh, stage, batch_size=batch_size, seq_len=seq_len,
                               log_unsharded=False)
    state = setup.init_fn(jax.random.PRNGKey(0))
    batch = jax.device_put(stages.example_batch(stage, batch_size, seq_len, cfg.model.vocab_size),
                           jax.devices()[0])
    return setup.step, state, batch, analytic_flops(cfg.model, stage, batch_size, seq_len)


def _stepper(run: list):
    """() -> metrics: one update of run = [step, state, batch, ...], keeping the new state
    (the step donates the old one)."""
    def go():
        run[1], metrics = run[0](run[1], run[2])
        return metrics
    return go


@measurement("train_step")
def train_step(results: dict, quick: bool = False, repeats: int = 3) -> dict:
    """Tokens/s and MFU of a full training update of the Chinchilla 44M shape, 1 device.

    Why this model: MFU says how well the code feeds the matmul units at the sizes it
    is for (pod training, d_model 8192); the toy tiny_cpu width (128) measures XLA's
    per-op overheads instead. 44M (d_model 512, ffw 2048, 8 heads of 64, 8 layers) is
    the smallest Chinchilla shape, with Sparrow's 32k vocabulary and Transformer-XL
    relative attention; sequences of 512 tokens (Sparrow's context is 2048), batch 4
    (2048 tokens a step). The update is the `lm` stage (every layer trains: 6 N per
    token, the usual MFU convention), AdamW, 1 device, with `model.remat="full"`
    (TRAIN_REMAT): the fastest setting here, though it recomputes each block's forward
    in the backward pass. Without remat, XLA:CPU's scan over the layers stacks every
    layer's residuals, [B, H, L, L] attention tensors included, into zero-filled
    buffers that are written, converted and read back: that memory traffic costs more
    than the recomputation (bf16 on the loaded machine: 4.5 vs 3.9 s a step; batch 8 is
    no faster per token).
    The recomputed FLOPs are not counted: this is model FLOPs utilisation, not
    hardware FLOPs.

    Dtypes: f32 and bf16 compute (params f32, as on pods), timed interleaved with an
    n x n matmul (n = 4096) of the same dtype: f32, and bf16 inputs with f32
    accumulation (how the model's bf16 matmuls run). Each step's MFU is its model
    FLOP/s over the matmul peak of ITS dtype (the higher of this measurement's and
    matmul_peak's), so a bf16 step is never flattered by the slower f32 peak.
    `mfu_vs_matmul_peak` (the headline) is for the dtype that trains fastest here
    (`train_compute_dtype`, bf16), over the bf16 peak, which is this machine's best
    matmul FLOP/s; `mfu_<dtype>` gives both. The f32 figure is higher only because
    the f32 peak is half the bf16 one: f32 steps are slower. Seconds = best single step.

    Model FLOPs are aot.analytic_flops (what `sparrow aot` reports): 6 N per token
    plus 12 B L^2 H K per layer. It counts the relative-position projection W_r per
    token and leaves out the relative-position scores; at this shape the two nearly
    cancel (the count is 0.7% below the matmul work actually done). The loss
    (log-softmax, and argmax for the accuracy metric, over 32k logits) is not model
    FLOPs and costs real time here.
    """
    batch_size, seq_len = (2, 32) if quick else (4, 512)
    dtypes = TRAIN_DTYPES[1:] if quick else TRAIN_DTYPES
    runs = {dtype: list(_train_setup(quick, dtype, batch_size, seq_len)) for dtype in dtypes}
    n = 256 if quick else 4096
    variants = {d: _stepper(r) for d, r in runs.items()}
    variants.update({f"matmul_{d}": _matmul_fn(n, d) for d in dtypes})
    seconds = _interleaved_best_seconds(variants, repeats)
    peak_keys = {"float32": "matmul_peak_flops", "bfloat16": "matmul_peak_flops_bf16"}
    peaks = {d: max(2.0 * n**3 / seconds[f"matmul_{d}"], results.get(peak_keys[d], 0.0))
             for d in dtypes}
    dtype = min(dtypes, key=seconds.get)
    flops = runs[dtype][3]
    out = {"train_tokens_per_second": batch_size * seq_len / seconds[dtype],
           "train_step_seconds": seconds[dtype], "train_model_flops_per_step": flops,
           "mfu_vs_matmul_peak": flops / seconds[dtype] / peaks[dtype],
           "train_compute_dtype": dtype, "train_model": "chinchilla_44m" if not quick else "toy",
           "train_stage": "lm", "train_batch_size": batch_size, "train_seq_len": seq_len}
    for d in dtypes:
        out[f"train_tokens_per_second_{d}"] = batch_size * seq_len / seconds[d]
        out[f"mfu_{d}"] = runs[d][3] / seconds[d] / peaks[d]
        out[f"train_matmul_peak_flops_{d}"] = peaks[d]
    return out


def _rl_batch_and_params(cfg, batch: int, length: int):
    """All-role hydra params and an RL batch (stages.example_batch) for `cfg.model`."""
    import jax
    from sparrow_jax.config import ROLES
    from sparrow_jax.model import hydra
    from sparrow_jax.train import stages
    params = hydra.init_params(cfg.model, jax.random.PRNGKey(0), roles=ROLES)
    data = stages.example_batch("rl", batch, length, cfg.model.vocab_size)
    return params, jax.device_put(data)


def _a2c(out, batch):
    """The RL stage's A2C loss on forward outputs (policy, teacher, value)."""
    from sparrow_jax.losses.a2c import a2c_loss
    from sparrow_jax.train.stages import next_token_targets as shift
    return a2c_loss(out["policy"], out["teacher"], out["value"], shift(batch["tokens_BxL"]),
                    shift(batch["rewards_BxL"]), shift(batch["policy_mask_BxL"]))


def _hydra_update(model_cfg):
    """Jitted (trainable, frozen, batch) -> ((loss, aux), grads): ONE hydra.forward
    running every role (trunk once), gradients w.r.t. policy top + value head only."""
    import jax
    from sparrow_jax.config import ROLES
    from sparrow_jax.model import hydra

    def loss_fn(trainable, frozen, batch):
        out = hydra.forward({**frozen, **trainable}, model_cfg, batch["tokens_BxL"],
                            valid_BxL=batch["valid_BxL"], roles=ROLES)
        loss, metrics = _a2c(out, batch)
        return loss, (metrics, out["pref_rm"], out["rule_rm"])
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def _separate_update(model_cfg):
    """Jitted baseline without the hydra: four full n_layers models, each running its
    own trunk + top. The policy(+value) model takes gradients w.r.t. its top and value
    head (its bottom layers frozen, as in Sparrow); teacher, pref RM and rule RM are
    forward-only. Args: (trainable, policy_frozen, teacher, pref_rm, rule_rm, batch)."""
    import jax
    from sparrow_jax.model import hydra

    def run(params, batch, roles):
        return hydra.forward(params, model_cfg, batch["tokens_BxL"], valid_BxL=batch["valid_BxL"],
                             roles=roles)

    def update(trainable, policy_frozen, teacher, pref_rm, rule_rm, batch):
        teacher_logits = run(teacher, batch, ("teacher",))["teacher"]

        def loss_fn(params):
            out = run({**policy_frozen, **params}, batch, ("policy", "value"))
            return _a2c({**out, "teacher": teacher_logits}, batch)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        aux = (metrics, run(pref_rm, batch, ("pref_rm",))["pref_rm"],
               run(rule_rm, batch, ("rule_rm",))["rule_rm"])
        return (loss, aux), grads
    return jax.jit(update)


def _role_model(params, role: str) -> dict:
    """A separate full model for `role`: its own trunk (a copy) plus the role's top."""
    import jax
    import jax.numpy as jnp
    tops = ("policy", "value") if role == "policy" else (role,)
    return jax.tree.map(jnp.copy, {"trunk": params["trunk"], **{t: params[t] for t in tops}})


def _hydra_work(model_cfg, batch: int, length: int) -> tuple[float, float]:
    """Model FLOPs (aot.analytic_flops conventions: 2 N per token forward, attention
    4 B L^2 H K per layer, backward = 2 x forward) of (hydra update, separate update).
    The separate models do the hydra's work plus three more trunk forwards."""
    from sparrow_jax.aot import part_params
    from sparrow_jax.config import ROLES
    m = model_cfg
    parts = part_params(m, ROLES)
    parts["trunk"] -= m.vocab_size * m.d_model  # embedding lookup: no matmul
    attention = 4.0 * batch * length ** 2 * m.n_heads * m.head_dim
    layers = {"trunk": m.n_frozen_layers, "value": 0}
    forward = {part: 2.0 * n * batch * length
               + layers.get(part, m.n_layers - m.n_frozen_layers) * attention
               for part, n in parts.items()}
    hydra = sum(forward.values()) + 2.0 * (forward["policy"] + forward["value"])
    return hydra, hydra + 3.0 * forward["trunk"]


@measurement("hydra_cost")
def hydra_cost(results: dict, quick: bool = False, repeats: int = 10) -> dict:
    """hydra_cost_ratio = seconds of one RL forward+backward over all five roles with
    the shared frozen trunk / seconds of the same work with four separate models.

    Model: tiny_cpu (d_model 128, vocab 1024, f32) at 10 layers with 8 frozen: the
    paper's 64 of 80. Chinchilla widths are not used here on purpose: at 10 layers a
    32k-vocabulary LM head costs about 4.5 layers of d_model 512, which would make the
    heads (the same work with or without the hydra) dominate, whereas at 70B a head is
    a third of one of 80 layers. tiny_cpu keeps the 70B's proportions: its work floor
    (below) is 0.48 against 0.456 for sparrow_70b. Batch 8 x 256 tokens (tiny_cpu's
    context), A2C loss as in the rl stage.
    Hydra: one hydra.forward with every role (trunk once, then the policy, teacher,
      pref RM and rule RM tops), grads w.r.t. the policy top + value head only.
    Baseline ("without the hydra, each role is a full n_layers model"): policy(+value),
      teacher, pref RM and rule RM each run their own 10 layers forward; the policy's
      backward still stops at its 8 frozen bottom layers (same trained params).
    `hydra_work_floor`: the ratio of model FLOPs of the two (heads and attention
      included, backward = 2 x forward): the ratio if time followed model FLOPs.
    """
    n_layers, n_frozen = (5, 4) if quick else (10, 8)
    batch, length = (2, 16) if quick else (8, 256)
    cfg = _tiny_config(quick, "rl", n_layers=n_layers, n_frozen_layers=n_frozen)
    params, data = _rl_batch_and_params(cfg, batch, length)
    trainable = {k: params[k] for k in ("policy", "value")}
    frozen = {k: v for k, v in params.items() if k not in trainable}
    hydra_fn, separate_fn = _hydra_update(cfg.model), _separate_update(cfg.model)
    models = {role: _role_model(params, role) for role in ("policy", "teacher", "pref_rm",
                                                          "rule_rm")}
    policy_frozen = {"trunk": models["policy"]["trunk"]}
    seconds = _interleaved_best_seconds({
        "hydra": lambda: hydra_fn(trainable, frozen, data),
        "separate": lambda: separate_fn(trainable, policy_frozen, models["teacher"],
                                        models["pref_rm"], models["rule_rm"], data),
    }, repeats)
    hydra_flops, separate_flops = _hydra_work(cfg.model, batch, length)
    return {"hydra_cost_ratio": seconds["hydra"] / seconds["separate"],
            "hydra_work_floor": hydra_flops / separate_flops,
            "hydra_update_seconds": seconds["hydra"],
            "separate_models_update_seconds": seconds["separate"],
            "hydra_n_layers": n_layers, "hydra_n_frozen_layers": n_frozen,
            "hydra_d_model": cfg.model.d_model, "hydra_batch_size": batch,
            "hydra_seq_len": length}


RULE_DIALOGUE_LENS = (1024, 512)  # the first is the headline figure


@measurement("rule_prefix_cost")
def rule_prefix_cost(results: dict, quick: bool = False, repeats: int = 20) -> dict:
    """rule_prefix_cost_ratio = seconds to score all 23 rules on one dialogue of
    L = 1024 tokens (dialogue encoded once, its KV cache shared by the rule suffixes:
    rewards.rule_scoring.rule_violation_probs) / seconds to score one rule the same way.

    Why L = 1024: the rule RM reads a whole dialogue, and a Sparrow dialogue with
    evidence is several turns plus ~500-character search results, several hundred to
    about a thousand tokens, in a 2048-token context [ours, SPARROW.md section 2-3].
    The same ratio at L = 512 is reported too (`rule_prefix_cost_ratio_L512`), since
    the ratio falls as dialogues grow. Model: tiny_cpu (f32) with max_len 2048,
    Sparrow's context, so every distance has its own relative encoding. Rule suffixes:
    the packaged rules via prepare_rule_suffixes with a tokenizer trained here (BPE,
    1024 pieces; `rule_suffix_len` = padded Q; every suffix is run at Q).
    `rule_prefix_work_floor` = (L + 23 Q) / (L + Q): the ratio if cost were
    proportional to tokens run (every suffix token runs the trunk and the rule RM top,
    like a dialogue token). `rule_unshared_over_shared` = seconds of scoring the 23
    rules without sharing (rule_violation_probs_unshared) / with sharing, at L = 1024.
    """
    import jax
    import jax.numpy as jnp
    from sparrow_jax.model import hydra
    from sparrow_jax.rewards import rule_scoring
    lengths = (48, 24) if quick else RULE_DIALOGUE_LENS
    cfg = _tiny_config(quick, max_len=128 if quick else 2048)
    params = hydra.init_params(cfg.model, jax.random.PRNGKey(0), roles=("rule_rm",))
    rule_tokens, rule_valid = (jnp.asarray(x) for x in _rule_suffixes())
    n_rules, q_len = rule_tokens.shape
    shared = jax.jit(lambda p, t, v, rt, rv: rule_scoring.rule_violation_probs(
        p, cfg.model, t, v, rt, rv))
    unshared = jax.jit(lambda p, t, v, rt, rv: rule_scoring.rule_violation_probs_unshared(
        p, cfg.model, t, v, rt, rv))
    variants = {}
    for length in lengths:
        dialogue = jnp.asarray(_random_tokens(1, length, cfg.model.vocab_size))
        valid = jnp.ones_like(dialogue, bool)
        variants[f"all_{length}"] = functools.partial(shared, params, dialogue, valid,
                                                      rule_tokens, rule_valid)
        variants[f"one_{length}"] = functools.partial(shared, params, dialogue, valid,
                                                      rule_tokens[:1], rule_valid[:1])
        if length == lengths[0]:
            unshared_fn = functools.partial(unshared, params, dialogue, valid,
                                            rule_tokens, rule_valid)
    seconds = _interleaved_best_seconds(variants, repeats)
    length = lengths[0]
    # The unshared reference is ~10x slower: timed on its own, a few rounds.
    seconds.update(_interleaved_best_seconds(
        {"unshared": unshared_fn, "shared": variants[f"all_{length}"]}, 3))
    out = {"rule_prefix_cost_ratio": seconds[f"all_{length}"] / seconds[f"one_{length}"],
           "rule_prefix_work_floor": (length + n_rules * q_len) / (length + q_len),
           "rule_dialogue_len": length, "rule_suffix_len": q_len,
           "rule_suffix_mean_real_tokens": float(rule_valid.sum(axis=1).mean()),
           "rule_count": n_rules, "rule_model_max_len": cfg.model.max_len,
           "rule_score_all_seconds": seconds[f"all_{length}"],
           "rule_score_one_seconds": seconds[f"one_{length}"],
           "rule_unshared_over_shared": seconds["unshared"] / seconds["shared"]}
    for other in lengths[1:]:
        out[f"rule_prefix_cost_ratio_L{other}"] = seconds[f"all_{other}"] / seconds[f"one_{other}"]
        out[f"rule_prefix_work_floor_L{other}"] = (other + n_rules * q_len) / (other + q_len)
    return out


@measurement("kv_decode")
def kv_decode(results: dict, quick: bool = False, repeats: int = 2) -> dict:
    """kv_decode_speedup = decode tokens/s of sampler.sample (prefill + KV-cached decode)
    / tokens/s of sampler.sample_uncached (a full forward over [B, P + N] every step).

    Tiny_cpu model, batch 8, prompt 16 tokens, N = 256 new tokens, temperature 1,
    eot banned so every row runs all N steps. Tokens/s = B * N / seconds of the call.
    """
    import jax
    import jax.numpy as jnp
    from sparrow_jax.model import hydra
    from sparrow_jax.sampling import sampler
    cfg = _tiny_config(quick)
    batch, prompt_len, new_tokens = (2, 4, 8) if quick else (8, 16, 256)
    params = hydra.init_params(cfg.model, jax.random.PRNGKey(0), roles=("policy",))
    prompt = jnp.asarray(_random_tokens(batch, prompt_len, cfg.model.vocab_size))
    valid = jnp.ones_like(prompt, bool)
    config = sampler.SamplingConfig(max_new_tokens=new_tokens, temperature=1.0)
    ids, rng = _no_eot_ids(), jax.random.PRNGKey(1)
    seconds = _interleaved_best_seconds({
        "cached": lambda: sampler.sample(params, cfg.model, prompt, valid, rng, config, ids),
        "uncached": lambda: sampler.sample_uncached(params, cfg.model, prompt, valid, rng,
                                                    config, ids),
    }, repeats)
    tokens = batch * new_tokens
    return {"kv_decode_speedup": seconds["uncached"] / seconds["cached"],
            "kv_decode_tokens_per_second": tokens / seconds["cached"],
            "uncached_decode_tokens_per_second": tokens / seconds["uncached"],
            "decode_batch_size": batch, "decode_prompt_len": prompt_len,
            "decode_new_tokens": new_tokens}


# A small toy world for the RL loop (`sparrow data toyworld --set ...`): enough prompts
# that the 16-episode batches do not repeat, small enough to generate in seconds.
RL_WORLD = ("n_entities=48", "n_heldout=8", "n_dialogues=240", "n_preferences=120",
            "n_rule_ratings=160", "n_prompts=200")
RL_QUICK_WORLD = ("n_entities=24", "n_heldout=6", "n_dialogues=120", "n_preferences=60",
                  "n_rule_ratings=80", "n_prompts=40")
RL_STEPS = 6  # timed: steps 2..RL_STEPS


def _rl_loop_metrics(quick: bool, rl_steps: int) -> tuple[list[dict], object]:
    """Run the real tiny-config recipe in a temporary directory: a toy world, then lm,
    sft, pref_rm and rule_rm for 2 steps each (wired as `sparrow demo` wires them), then
    `train_rl` for `rl_steps` steps logging every step. Returns (the rl stage's
    metrics.jsonl records, its config). Progress output goes to stderr."""
    import contextlib
    from sparrow_jax import demo
    from sparrow_jax.rl.trainer import train_rl
    from sparrow_jax.train.loop import train_stage
    from sparrow_jax.train.metrics import read_metrics
    model = [f"--config.model.{k}={v}" for k, v in QUICK_MODEL.items()] if quick else []
    overrides = ["--config.train.steps=2", "--config.rl.normaliser_batches=1"] + model
    if quick:
        overrides += ["--config.train.batch_size=4", "--config.rl.max_new_tokens=8",
                      "--config.train.eval_batches=1"]
    settings = demo.DemoSettings(overrides=tuple(overrides),
                                 world_settings=RL_QUICK_WORLD if quick else RL_WORLD)
    rl_settings = demo.DemoSettings(
        overrides=tuple(overrides + [f"--config.train.steps={rl_steps}",
                                     "--config.train.log_every=1"]),
        world_settings=settings.world_settings)
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(sys.stderr):
        demo.make_world(root, settings)
        for stage in ("lm", "sft", "pref_rm", "rule_rm"):
            train_stage(demo.stage_config(root, stage, settings), demo.stage_dir(root, stage))
        cfg = demo.stage_config(root, "rl", rl_settings)
        train_rl(cfg, demo.stage_dir(root, "rl"))
        records = read_metrics(os.path.join(demo.stage_dir(root, "rl"), "logs"), "train")
    return records, cfg


@measurement("rl_episodes")
def rl_episodes(results: dict, quick: bool = False, repeats: int = 0) -> dict:
    """rl_episodes_per_second of the real RL loop (sparrow_jax.rl.trainer.train_rl) with
    experiments/tiny_cpu.py:rl, on a small generated toy world (RL_WORLD) whose stages
    trained 2 steps each (wired as `sparrow demo` wires them; Elo normaliser from one
    batch). An RL step is: self-play of 16 episodes (prompt mixture or context buffer,
    one agent turn each, sampled with the KV cache, searching when the agent asks),
    rule-RM scoring of all 23 rules with the shared dialogue prefix, and the jitted A2C
    update (policy, value, teacher and preference RM in one trunk pass).

    From the trainer's own metrics (every step logged): its `episodes_per_second` at
    step k is episodes so far / seconds since train_rl started, so seconds up to step k
    = episodes_k / episodes_per_second_k. The figure is episodes / seconds over steps 2
    to RL_STEPS, which leaves out set-up, the normaliser's rollouts and step 1 (where
    the sampler, the rule scorer and the update compile). `rl_rollout_fraction`: share
    of those seconds spent in rollouts and host rewards (the trainer's
    `rollout_fraction`, same differencing). With 2-step stages the policy is untrained:
    `rl_agent_turn_tokens` and `rl_search_rate` (means over the timed steps) say what
    its turns were like; a trained policy's turns end earlier and search more.
    """
    del repeats
    rl_steps = 3 if quick else RL_STEPS
    records, cfg = _rl_loop_metrics(quick, rl_steps)
    by_step = {int(r["step"]): r for r in records}
    batch = cfg.train.batch_size

    def elapsed(step):  # seconds since train_rl started, at the end of `step`
        return step * batch / by_step[step]["episodes_per_second"]

    first, last = 1, rl_steps
    seconds = elapsed(last) - elapsed(first)
    rollout = (by_step[last]["rollout_fraction"] * elapsed(last)
               - by_step[first]["rollout_fraction"] * elapsed(first))
    timed = [by_step[k] for k in range(first + 1, last + 1)]
    mean = lambda key: sum(r[key] for r in timed) / len(timed)  # noqa: E731
    return {"rl_episodes_per_second": (last - first) * batch / seconds,
            "rl_step_seconds": seconds / (last - first),
            "rl_rollout_fraction": rollout / seconds, "rl_episode_batch": batch,
            "rl_timed_steps": last - first, "rl_max_new_tokens": cfg.rl.max_new_tokens,
            "rl_agent_turn_tokens": mean("agent_turn_tokens"),
            "rl_search_rate": mean("search_rate") + 0.0}


# ---------------------------------------------------------------------------- entry point

def run(names=None, quick: bool = False) -> dict:
    """Run the named measurements (default all, in registry order); merged results."""
    results: dict = {}
    for name in names or list(MEASUREMENTS):
        results.update(MEASUREMENTS[name](results, quick=quick))
    return results


def format_table(results: dict) -> str:
    width = max(len(k) for k in results)
    lines = []
    for key, value in results.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key:{width}s}  {text}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="toy sizes (smoke test)")
    parser.add_argument("--only", default="", help="comma-separated measurement names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(MEASUREMENTS)
    unknown = set(names) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurements {sorted(unknown)}; have {list(MEASUREMENTS)}")
    results = run(names, quick=args.quick)
    print(json.dumps(results) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
