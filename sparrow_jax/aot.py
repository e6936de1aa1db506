"""Ahead-of-time compilation of the update steps for a large mesh, without weights.

Steps: the update of each stage (sft, pref_rm, rule_rm, rl; rl at `rl_sequence_length`,
the L the RL trainer compiles at) and the RL step's other two programs, `sample` and
`rule_score` (aot_rl.py).

Everything is abstract: the train state and batch are ShapeDtypeStructs carrying
NamedShardings (from jax.eval_shape of the sharded init), so `.lower().compile()`
allocates nothing. Memory numbers come from `compiled.memory_analysis()` of the
per-device SPMD program. FLOPs are analytic: `compiled.cost_analysis()` counts a
scanned layer stack once, so it undercounts by about the number of layers.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import ml_collections

from sparrow_jax import aot_rl
from sparrow_jax import sharding as shd
from sparrow_jax.config import ROLES, validate
from sparrow_jax.model import hydra
from sparrow_jax.rl.lengths import sequence_length
from sparrow_jax.train import stages
from sparrow_jax.train.state import count_params
from sparrow_jax.train.step import batch_shardings
from sparrow_jax.train.trainable import STAGE_ROLES, TRAINABLE_KEYS

UPDATE_STEPS = ("sft", "pref_rm", "rule_rm", "rl")
AOT_STEPS = UPDATE_STEPS + ("sample", "rule_score")
RL_STEPS = ("rl", "sample", "rule_score")  # these need the RL train state
TEMPORARIES_NOTE = ("temporaries are from the XLA CPU compiler's buffer assignment; the TPU "
                    "compiler fuses and schedules differently, so treat them as an estimate")


def with_layers(cfg, layers: int | None):
    """A copy of cfg with n_layers = layers, keeping the frozen fraction (at least 1 top layer)."""
    if layers is None:
        return cfg
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    m = cfg.model
    frozen = round(layers * m.n_frozen_layers / m.n_layers)
    m.n_frozen_layers = max(0, min(frozen, layers - 1))
    m.n_layers = layers
    validate(cfg)
    return cfg


def part_params(model_cfg, roles: Sequence[str] = ROLES) -> dict[str, int]:
    """Parameter count per top-level key of the hydra (abstract, nothing allocated)."""
    shapes = jax.eval_shape(lambda r: hydra.init_params(model_cfg, r, roles=roles),
                            jax.random.PRNGKey(0))
    return {k: count_params(v) for k, v in shapes.items()}


# The tops each stage's jitted update runs. The RL update leaves the rule RM out: rules are
# scored outside it (rewards/rule_scoring, the dialogue prefix shared by all rules), and its
# params only ride along in the state (the RL update carries the whole agent).
UPDATE_ROLES = {**STAGE_ROLES, "rl": tuple(r for r in STAGE_ROLES["rl"] if r != "rule_rm")}


def analytic_flops(model_cfg, stage: str, batch: int, seq_len: int) -> float:
    """Model FLOPs of one update: 6 N T on the trained path, 2 N T forward-only elsewhere.

    N excludes the embedding lookup (no matmul) and includes an untied unembedding;
    attention adds 4 B L^2 H K per layer forward (scores and weighted sum, full
    square, relative-position terms not counted), times 3 where gradients flow.
    Remat recomputation is not model FLOPs and is not counted. The rl update reads the
    frozen trunk's output from the rule scorer (`stage_setup`): its trunk is not counted.
    """
    m = model_cfg
    tokens = batch * seq_len
    parts = part_params(m, UPDATE_ROLES[stage])
    vocab_dim = m.vocab_size * m.d_model
    parts["trunk"] -= vocab_dim  # embedding lookup
    if m.tied_embeddings:
        for top in hydra.lm_head_tops(m):
            if top in parts:
                parts[top] += vocab_dim
    attn_per_layer = 4.0 * batch * seq_len ** 2 * m.n_heads * m.head_dim
    layers = {"trunk": m.n_frozen_layers, "value": 0}
    trained = TRAINABLE_KEYS[stage]
    total = 0.0
    if stage == "rl":
        parts.pop("trunk")
    for part, n in parts.items():
        mult = 3.0 if part in trained else 1.0
        total += mult * (2.0 * n * tokens + layers.get(part, m.n_layers - m.n_frozen_layers)
                         * attn_per_layer)
    return total


def stage_setup(cfg, mesh, stage: str):
    """The stage's StageSetup at the length it trains at: rl at `sequence_length(cfg)`,
    reading the trunk's output from its batch (as rl/trainer.py builds it), the others at
    train.seq_len."""
    if stage == "rl":
        return stages.build_stage(cfg, mesh, stage, seq_len=sequence_length(cfg),
                                  log_unsharded=False, trunk_input=True)
    return stages.build_stage(cfg, mesh, stage, seq_len=cfg.train.seq_len, log_unsharded=False)


def compile_step(cfg, mesh, stage: str, setup=None) -> dict[str, Any]:
    """Lower and compile one stage's update step on abstract inputs; report its numbers.
    `setup`: the stage's `stage_setup`, if already built."""
    t0 = time.time()
    setup = setup or stage_setup(cfg, mesh, stage)
    rules = shd.rules_from_config(cfg.mesh)
    batch = shd.abstract_with_shardings(setup.batch_shapes,
                                        batch_shardings(setup.batch_shapes, mesh, rules))
    compiled = setup.step.lower(setup.abstract_state, batch).compile()
    abstract = setup.abstract_state
    seq_len = setup.batch_shapes["tokens_BxL"].shape[1] if stage == "rl" else cfg.train.seq_len
    return {
        "trainable_params": count_params(abstract.params),
        "frozen_params": count_params(abstract.frozen),
        **aot_rl.memory_report(compiled, cfg.mesh.hbm),
        "flops_per_step": analytic_flops(cfg.model, stage, cfg.train.batch_size, seq_len),
        "batch": {k: list(v.shape) for k, v in setup.batch_shapes.items()},
        "compile_seconds": round(time.time() - t0, 1),
    }


def run_aot(cfg, steps: Sequence[str] = AOT_STEPS, layers: int | None = None,
            num_devices: int | None = None) -> dict[str, Any]:
    """Compile `steps` for cfg's mesh on simulated devices; the report as a dict.

    The caller must have made `num_devices` (default cfg.mesh.aot_num_devices, 0 =
    all) devices available before JAX initialised (see commands/aot.py).
    """
    t0 = time.time()
    cfg = with_layers(cfg, layers)
    n = num_devices or cfg.mesh.aot_num_devices or jax.device_count()
    if jax.device_count() < n:
        raise RuntimeError(f"need {n} devices, JAX has {jax.device_count()}")
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:n])  # fails on a bad mesh.shape before compiling
    parts = part_params(cfg.model)
    report = {
        "config": cfg.name,
        "num_devices": n,
        "platform": jax.devices()[0].platform,
        "mesh_shape": dict(mesh.shape),
        "n_layers": cfg.model.n_layers,
        "n_frozen_layers": cfg.model.n_frozen_layers,
        "total_params": parts["trunk"] + parts["policy"],
        "hydra_params": sum(parts.values()),
        "params_by_part": parts,
        "batch_size": cfg.train.batch_size,
        "seq_len": cfg.train.seq_len,
        "rl_sequence_length": sequence_length(cfg),
        "note": TEMPORARIES_NOTE,
        "steps": {},
    }
    unknown = [s for s in steps if s not in AOT_STEPS]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r}; choose from {AOT_STEPS}")
    rl_setup = stage_setup(cfg, mesh, "rl") if set(steps) & set(RL_STEPS) else None
    for stage in steps:
        if stage == "sample":
            report["steps"][stage] = aot_rl.compile_sample(cfg, mesh, rl_setup.abstract_state)
        elif stage == "rule_score":
            report["steps"][stage] = aot_rl.compile_rule_score(cfg, mesh, rl_setup.abstract_state)
        else:
            report["steps"][stage] = compile_step(cfg, mesh, stage,
                                                  rl_setup if stage == "rl" else None)
    report["seconds"] = round(time.time() - t0, 1)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a table, one row per step, then the sampler's collective traffic."""
    gib = 2.0**30
    lines = [
        f"{report['config']}: {report['num_devices']} {report['platform']} devices, mesh "
        f"{report['mesh_shape']}, {report['n_layers']} layers ({report['n_frozen_layers']} frozen)",
        f"params: LM (trunk+policy) {report['total_params'] / 1e9:.2f}B, hydra "
        f"{report['hydra_params'] / 1e9:.2f}B; batch {report['batch_size']} x {report['seq_len']}; "
        f"RL at L = {report['rl_sequence_length']}",
        f"{'step':10s} {'trainable':>10s} {'args GiB':>9s} {'temps GiB':>10s} {'resident':>9s} "
        f"{'total GiB':>10s} {'budget':>8s} {'fits':>5s} {'TFLOP/step':>11s} {'compile s':>9s}",
    ]
    for name, s in report["steps"].items():
        b = s["per_device_bytes"]
        lines.append(
            f"{name:10s} {s['trainable_params'] / 1e9:9.2f}B {b['arguments'] / gib:9.2f} "
            f"{b['temporaries'] / gib:10.2f} {b.get('resident', 0) / gib:9.2f} "
            f"{b['total'] / gib:10.2f} {s['hbm_budget_bytes'] / gib:6.0f}Gi {str(s['fits']):>5s} "
            f"{s['flops_per_step'] / 1e12:11.1f} {s['compile_seconds']:9.1f}")
    sample = report["steps"].get("sample")
    if sample:
        for label, part in ((f"{sample['layout']} layout", sample),
                            ("training layout", sample["training_layout"])):
            c = part["collectives"]
            lines.append(
                f"sample, {label}: collectives {c['bytes_per_decode_step'] / 2**20:.1f} MiB per "
                f"device per decode step, {c['bytes_outside_loop'] / 2**20:.1f} MiB outside the "
                f"loop; total {part['per_device_bytes']['total'] / gib:.2f} GiB")
    lines.append(f"per-device bytes; resident = the RL state held beside the program; "
                 f"{report['note']}. total {report['seconds']}s")
    return "\n".join(lines)
