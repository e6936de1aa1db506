"""Training figures: the matmul peak, the 44M train step's MFU, the hydra's cost ratio."""
from __future__ import annotations

from bench_common import (QUICK_MODEL, UPDATE_REMAT, interleaved_best_seconds, matmul_fn,
                          measurement, stepper, tiny_config)


@measurement("matmul_peak")
def matmul_peak(results: dict, quick: bool = False, repeats: int = 3) -> dict:
    """Best-of-`repeats` n x n matmul, jitted; FLOP/s = 2 n^3 / seconds.

    `matmul_peak_flops`: f32 inputs; `matmul_peak_flops_bf16`: bf16 inputs, f32 accumulation.
    """
    n = 256 if quick else 4096
    seconds = interleaved_best_seconds({d: matmul_fn(n, d) for d in ("float32", "bfloat16")},
                                       repeats)
    return {"matmul_peak_flops": 2.0 * n**3 / seconds["float32"],
            "matmul_peak_flops_bf16": 2.0 * n**3 / seconds["bfloat16"], "matmul_size": n}


TRAIN_DTYPES = ("float32", "bfloat16")
# Chinchilla 44M (docs/recipe.md section 3): d_model 512, ffw 2048, 8 heads of 64, 8 layers,
# with Sparrow's 32k vocabulary and relative positions (tiny_cpu supplies the rest, but
# not its smeared keys, a copying aid for the toy trunk that Chinchilla does not have).
CHINCHILLA_44M = {"vocab_size": 32000, "d_model": 512, "d_ff": 2048, "n_heads": 8,
                  "head_dim": 64, "n_layers": 8, "n_frozen_layers": 0, "smeared_keys": False}


def _train_setup(quick: bool, dtype: str, batch_size: int, seq_len: int, stage: str = "lm"):
    """(jitted update step, state, batch, model FLOPs per step) for the Chinchilla 44M
    shape on 1 device (`quick`: a toy width and vocabulary)."""
    import jax
    from sparrow_jax import sharding as shd
    from sparrow_jax.aot import analytic_flops
    from sparrow_jax.train import stages
    shape = {**CHINCHILLA_44M, **({"vocab_size": 1024, **QUICK_MODEL} if quick else {})}
    # Scanned: the 44M's 8 layers as the pod configs run theirs (and XLA:CPU cannot run the
    # looped bfloat16 backward of relative positions: stages.build_stage refuses it).
    cfg = tiny_config(False, stage, compute_dtype=dtype, max_len=seq_len, remat=UPDATE_REMAT,
                       scan_layers=True, **shape)
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    setup = stages.build_stage(cfg, mesh, stage, batch_size=batch_size, seq_len=seq_len,
                               log_unsharded=False)
    state = setup.init_fn(jax.random.PRNGKey(0))
    batch = jax.device_put(stages.example_batch(stage, batch_size, seq_len, cfg.model.vocab_size),
                           jax.devices()[0])
    return setup.step, state, batch, analytic_flops(cfg.model, stage, batch_size, seq_len)



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
    (bench_common.UPDATE_REMAT, the fastest setting here; bf16 on the loaded machine:
    3.9 s a step against 4.5 s without remat, and batch 8 is no faster per token). The
    recomputed forward is not counted: this is model FLOPs utilisation, not hardware
    FLOPs.

    Dtypes: f32 and bf16 compute (params f32, as on pods), timed interleaved with an
    n x n matmul (n = 4096) of the same dtype: f32, and bf16 inputs with f32
    accumulation (how the model's bf16 matmuls run). `mfu_<dtype>` is each step's model
    FLOP/s over the matmul peak of ITS dtype (the higher of this measurement's and
    matmul_peak's). `mfu_vs_matmul_peak` (the headline) is the dtype that trains
    fastest here (`train_compute_dtype`) over the BEST of the peaks
    (`train_matmul_peak_flops`), so neither dtype's figure is flattered by the other's
    slower peak. Which dtype wins depends on the host the VM lands on: on earlier
    sessions' hosts the bf16 matmul ran at twice the f32 peak and the bf16 step was
    fastest; on an AVX2-only host (no bf16 instructions) the bf16 matmul is slower than
    the f32 one and the f32 step wins. Seconds = best single step.

    Model FLOPs are aot.analytic_flops (what `sparrow aot` reports): 6 N per token
    plus 12 B L^2 H K per layer. It counts the relative-position projection W_r per
    token and leaves out the relative-position scores; at this shape the two nearly
    cancel. Attention is counted as the full L^2 square (the usual convention); the
    model's block-causal attention (layers.query_blocks) computes 56% of it. The loss
    (log-softmax, and argmax for the accuracy metric, over 32k logits) is not model
    FLOPs; with losses.sft's fast paths it costs about 1% of the step's wall time.
    """
    batch_size, seq_len = (2, 32) if quick else (4, 512)
    dtypes = TRAIN_DTYPES[1:] if quick else TRAIN_DTYPES
    runs = {dtype: list(_train_setup(quick, dtype, batch_size, seq_len)) for dtype in dtypes}
    n = 256 if quick else 4096
    variants = {d: stepper(r) for d, r in runs.items()}
    variants.update({f"matmul_{d}": matmul_fn(n, d) for d in dtypes})
    seconds = interleaved_best_seconds(variants, repeats)
    peak_keys = {"float32": "matmul_peak_flops", "bfloat16": "matmul_peak_flops_bf16"}
    peaks = {d: max(2.0 * n**3 / seconds[f"matmul_{d}"], results.get(peak_keys[d], 0.0))
             for d in dtypes}
    dtype = min(dtypes, key=seconds.get)
    flops = runs[dtype][3]
    best_peak = max(peaks.values())
    out = {"train_tokens_per_second": batch_size * seq_len / seconds[dtype],
           "train_step_seconds": seconds[dtype], "train_model_flops_per_step": flops,
           "mfu_vs_matmul_peak": flops / seconds[dtype] / best_peak,
           "train_matmul_peak_flops": best_peak,
           "train_compute_dtype": dtype, "train_model": "chinchilla_44m" if not quick else "toy",
           "train_stage": "lm", "train_batch_size": batch_size, "train_seq_len": seq_len,
           "train_remat": UPDATE_REMAT}
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
    from sparrow_jax.losses.sft import next_token_targets as shift
    return a2c_loss(out["policy"], out["teacher"], out["value"], shift(batch["tokens_BxL"]),
                    shift(batch["rewards_BxL"]), shift(batch["policy_mask_BxL"]),
                    shift(batch["sampled_mask_BxL"]))


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


def _policy_layers_forward(model_cfg, batch: int, length: int) -> float:
    """Model FLOPs of one forward of the policy top's layers (no head): what remat
    recomputes in the backward pass, in both variants alike."""
    import jax
    from sparrow_jax.model import hydra
    m = model_cfg
    shapes = jax.eval_shape(lambda r: hydra.init_params(m, r, roles=("policy",)),
                            jax.random.PRNGKey(0))
    n_top = m.n_layers - m.n_frozen_layers
    attention = 4.0 * batch * length ** 2 * m.n_heads * m.head_dim
    return (2.0 * hydra.count_params(shapes["policy"]["layers"]) * batch * length
            + n_top * attention)


def _hydra_ratio(quick: bool, n_layers: int, n_frozen: int, repeats: int) -> dict:
    """Seconds of the hydra and the separate-models update at one depth, and work floors."""
    batch, length = (2, 16) if quick else (8, 256)
    # The 70B config's head set: tiny_cpu's preference RM also keeps an LM head
    # (model.pref_rm_likelihood, a toy-world aid), which the pod configs leave off.
    cfg = tiny_config(quick, "rl", n_layers=n_layers, n_frozen_layers=n_frozen,
                      remat=UPDATE_REMAT, pref_rm_likelihood=False)
    params, data = _rl_batch_and_params(cfg, batch, length)
    trainable = {k: params[k] for k in ("policy", "value")}
    frozen = {k: v for k, v in params.items() if k not in trainable}
    hydra_fn, separate_fn = _hydra_update(cfg.model), _separate_update(cfg.model)
    models = {role: _role_model(params, role) for role in ("policy", "teacher", "pref_rm",
                                                          "rule_rm")}
    policy_frozen = {"trunk": models["policy"]["trunk"]}
    seconds = interleaved_best_seconds({
        "hydra": lambda: hydra_fn(trainable, frozen, data),
        "separate": lambda: separate_fn(trainable, policy_frozen, models["teacher"],
                                        models["pref_rm"], models["rule_rm"], data),
    }, repeats)
    hydra_flops, separate_flops = _hydra_work(cfg.model, batch, length)
    recompute = (_policy_layers_forward(cfg.model, batch, length)
                 if cfg.model.remat != "none" else 0.0)
    return {"ratio": seconds["hydra"] / seconds["separate"],
            "floor": hydra_flops / separate_flops,
            "floor_remat": (hydra_flops + recompute) / (separate_flops + recompute),
            "seconds": seconds, "cfg": cfg, "batch": batch, "length": length}


@measurement("hydra_cost")
def hydra_cost(results: dict, quick: bool = False, repeats: int = 10) -> dict:
    """hydra_cost_ratio = seconds of one RL forward+backward over all five roles with
    the shared frozen trunk / seconds of the same work with four separate models.

    Model: tiny_cpu's widths (d_model 128, vocab 1024, f32, smeared keys as tiny_cpu sets
    them: `hydra_smeared_keys`; the preference RM without tiny_cpu's extra LM head, as in
    sparrow_70b: `hydra_pref_rm_likelihood`) at the paper's depth: 80 layers, 64 frozen.
    Batch 8 x 256 tokens (tiny_cpu's context), A2C loss as in the rl stage,
    `model.remat="full"` for both (bench_common.UPDATE_REMAT: the fastest here).
    Hydra: one hydra.forward with every role (trunk once, then the policy, teacher,
      pref RM and rule RM tops), grads w.r.t. the policy top + value head only.
    Baseline ("without the hydra, each role is a full n_layers model"): policy(+value),
      teacher, pref RM and rule RM each run their own 80 layers forward; the policy's
      backward still stops at its 64 frozen bottom layers (same trained params).
    `hydra_work_floor`: the ratio of model FLOPs of the two (heads and attention
      included, backward = 2 x forward): the ratio if time followed model FLOPs.
    `hydra_work_floor_remat`: the same counting what remat="full" adds to both
      variants, one more forward of the policy top's layers (recomputed in the
      backward pass): the ratio if time followed the FLOPs actually done.

    Why the paper's depth and not fewer layers with the same 4:1 split: the heads (two
    LM heads of vocab 1024, the RM heads, the value MLP) are the same work with or
    without the hydra. At tiny width an LM head costs 0.67 of a layer; at 70B it costs
    a third of one of 80 layers. With 80 layers tiny's heads weigh about what the 70B's
    do: work floor 0.458 (0.481 with remat) against sparrow_70b's 0.456 (0.480). With 10
    layers they weigh 8x more and the floors rise to 0.481 (0.502). That shallow ratio is
    reported too
    (`hydra_cost_ratio_10_layers`, 5 repeats), so the effect stays visible.
    """
    (n_layers, n_frozen), shallow = ((5, 4), (3, 2)) if quick else ((80, 64), (10, 8))
    paper = _hydra_ratio(quick, n_layers, n_frozen, repeats)
    shallow_run = _hydra_ratio(quick, *shallow, repeats=max(1, repeats // 2))
    cfg = paper["cfg"]
    return {"hydra_cost_ratio": paper["ratio"],
            "hydra_work_floor": paper["floor"],
            "hydra_work_floor_remat": paper["floor_remat"],
            "hydra_update_seconds": paper["seconds"]["hydra"],
            "separate_models_update_seconds": paper["seconds"]["separate"],
            "hydra_n_layers": n_layers, "hydra_n_frozen_layers": n_frozen,
            "hydra_d_model": cfg.model.d_model, "hydra_batch_size": paper["batch"],
            "hydra_seq_len": paper["length"], "hydra_remat": cfg.model.remat,
            "hydra_smeared_keys": int(cfg.model.smeared_keys),
            "hydra_pref_rm_likelihood": int(cfg.model.pref_rm_likelihood),
            "hydra_cost_ratio_10_layers": shallow_run["ratio"],
            "hydra_work_floor_remat_10_layers": shallow_run["floor_remat"]}
