"""The weight-projection dtype of the RL stage's forward-only calls (`rl.projection_dtype`).

Rollouts and the reward models' scoring need no gradient, so their weight projections may take
bfloat16 inputs (float32 sums, float32 activations: `ModelSpec.with_projection_dtype`). Whether
that pays depends on the backend: XLA:CPU runs bf16 x bf16 -> f32 matmuls about twice as fast as
float32 on a host with AVX-512 BF16, and slower than float32 on one without. 'auto' measures it
when a run begins; the choice is kept in the run's checkpoints, so a resumed run (on any host)
samples and scores with the same arithmetic.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sparrow_jax import distributed
from sparrow_jax.model.layers import project
from sparrow_jax.model.spec import ModelSpec

log = logging.getLogger(__name__)

# bf16 inputs must make the measured matmul at least this much faster: the casts, the attention
# einsums (which stay in the compute dtype) and the moved numerics have to be paid for.
MIN_SPEEDUP = 1.25
# Checkpoints written before the key existed sampled and scored in float32.
STORED_BEFORE_THE_KEY = "float32"


def inference_spec(cfg, projection_dtype: str) -> ModelSpec:
    """The model spec of the RL stage's forward-only calls: `cfg.model` with weight
    projections fed `projection_dtype` ('float32' | 'bfloat16') inputs."""
    return ModelSpec.of(cfg.model).with_projection_dtype(projection_dtype)


def _shape(spec: ModelSpec) -> tuple[int, int, int]:
    """(rows, D, F) of the measured projection: the model's d_model and d_ff (capped at 2048
    and 8192), rows 4096 down to 256 so one call stays under about a GFLOP (sub-millisecond
    calls time the dispatch: at 512 x 128 x 512 the measured ratio wandered 1.1-1.4x here,
    at 4096 rows 1.7-1.8x)."""
    d, f = min(spec.d_model, 2048), min(spec.d_ff, 8192)
    return int(min(4096, max(256, 2 ** 29 // (d * f)))), d, f


def matmul_seconds(spec: ModelSpec, repeats: int = 7) -> dict[str, float]:
    """{'float32': s, 'bfloat16': s}: the best time of one [rows, D] x [D, F] projection
    (`_shape`) on the default backend, as `layers.project` runs it in a float32 model and with
    bf16 inputs; the two alternate, after a warm-up."""
    rows, d, f = _shape(spec)
    x = jax.random.normal(jax.random.PRNGKey(0), (rows, d), jnp.float32)
    w = jax.random.normal(jax.random.PRNGKey(1), (d, f), jnp.float32)
    fns = {name: jax.jit(functools.partial(project, "rd,df->rf",
                                           spec=spec.with_projection_dtype(name)))
           for name in ("float32", "bfloat16")}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        jax.block_until_ready(fn(x, w))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(x, w))
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def resolve_projection_dtype(cfg, stored_meta: Mapping[str, Any] | None = None) -> str:
    """'float32' or 'bfloat16' for this run: a resumed run's stored choice; else the configured
    one; for 'auto', 'bfloat16' when the model computes in bfloat16 (nothing to narrow), else
    process 0's measurement (`matmul_seconds`: bf16 at least MIN_SPEEDUP times faster)."""
    chosen = cfg.rl.projection_dtype
    if stored_meta is not None:
        stored = str(stored_meta.get("projection_dtype", STORED_BEFORE_THE_KEY))
        if chosen not in ("auto", stored):
            log.warning("rl.projection_dtype=%s, but the run being resumed began with %s: it "
                        "keeps %s (start a new workdir to change it)", chosen, stored, stored)
        return stored
    if chosen != "auto":
        return chosen
    spec = ModelSpec.of(cfg.model)
    if spec.compute_dtype == "bfloat16":
        return "bfloat16"
    seconds = matmul_seconds(spec)
    mine = "bfloat16" if seconds["bfloat16"] * MIN_SPEEDUP <= seconds["float32"] else "float32"
    chosen = distributed.allgather_objects(mine)[0]
    rows, d, f = _shape(spec)
    log.info("rl.projection_dtype=auto: %s (a [%d, %d] x [%d, %d] projection: float32 %.3g ms, "
             "bfloat16 inputs %.3g ms here; every process takes process 0's choice)", chosen, rows, d, d, f,
             1e3 * seconds["float32"], 1e3 * seconds["bfloat16"])
    return chosen


def aot_projection_dtype(cfg) -> str:
    """The projection dtype `sparrow aot` compiles rollouts and scoring with: the configured
    one; 'auto', which a run resolves by measuring its own backend, as 'bfloat16' (an
    accelerator's matmul units take bf16 inputs at full rate)."""
    return "bfloat16" if cfg.rl.projection_dtype == "auto" else cfg.rl.projection_dtype
