"""Per-stage losses over the hydra, batch layouts, and one builder for a stage's step.

Batch dicts (global batch B; token arrays are int32, masks float32 / bool):
  sft, lm   tokens_BxL, valid_BxL, loss_mask_BxL (1 where token t is a target)
  pref_rm   tokens_BxKxL, valid_BxKxL, last_index_BxK (the candidate's last token),
            chosen_B, candidate_valid_BxK, aux_target_BxK, aux_mask_BxK
            (aux = "supported and plausible", scored with the same Elo as a logit)
  rule_rm   tokens_BxL, valid_BxL, answer_index_B (position whose output predicts
            the "Yes"/"No" answer), broken_B
  rl        tokens_BxL, valid_BxL, policy_mask_BxL (agent and search-query tokens),
            rewards_BxL (reward received at token t)
Logits at position t predict token t + 1; the losses are given shifted arrays.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sparrow_jax import sharding as shd
from sparrow_jax.losses.a2c import a2c_loss
from sparrow_jax.losses.preference import preference_loss
from sparrow_jax.losses.rule import rule_loss
from sparrow_jax.losses.sft import sft_loss
from sparrow_jax.model import hydra
from sparrow_jax.train.optimizer import make_optimizer
from sparrow_jax.train.state import sharded_state_factory
from sparrow_jax.train.step import TrainStep, make_train_step
from sparrow_jax.train.trainable import STAGE_ROLES

STAGES = ("lm", "sft", "pref_rm", "rule_rm", "rl")
NUM_CANDIDATES = 4  # preference comparisons: 2 with evidence, 2 without [likely]


def _shift(x_BxL):
    return x_BxL[:, 1:]


def _sft(model_cfg, **_):
    def loss_fn(params, batch, rng):
        del rng
        out = hydra.forward(params, model_cfg, batch["tokens_BxL"], valid_BxL=batch["valid_BxL"],
                            roles=("policy",))
        return sft_loss(out["policy"][:, :-1], _shift(batch["tokens_BxL"]),
                        _shift(batch["loss_mask_BxL"]))
    return loss_fn


def _pref_rm(model_cfg, aux_weight=0.5, centring_coef=1e-3, **_):
    def loss_fn(params, batch, rng):
        del rng
        b, k, length = batch["tokens_BxKxL"].shape
        flat = lambda x: x.reshape((b * k, length))
        out = hydra.forward(params, model_cfg, flat(batch["tokens_BxKxL"]),
                            valid_BxL=flat(batch["valid_BxKxL"]), roles=("pref_rm",))
        last_N = batch["last_index_BxK"].reshape((b * k, 1))
        elo_BxK = jnp.take_along_axis(out["pref_rm"], last_N, axis=1).reshape((b, k))
        return preference_loss(
            elo_BxK, batch["chosen_B"], batch["candidate_valid_BxK"],
            aux_logits_BxK=elo_BxK, aux_targets_BxK=batch["aux_target_BxK"],
            aux_mask_BxK=batch["aux_mask_BxK"], aux_weight=aux_weight,
            centring_coef=centring_coef)
    return loss_fn


def _rule_rm(model_cfg, **_):
    def loss_fn(params, batch, rng):
        del rng
        out = hydra.forward(params, model_cfg, batch["tokens_BxL"], valid_BxL=batch["valid_BxL"],
                            roles=("rule_rm",))
        index_Bx1x1 = batch["answer_index_B"][:, None, None]
        logits_Bx2 = jnp.take_along_axis(out["rule_rm"], index_Bx1x1, axis=1)[:, 0]
        return rule_loss(logits_Bx2, batch["broken_B"])
    return loss_fn


def _rl(model_cfg, alpha=0.1, value_coef=1.0, entropy_coef=0.0, kl_mode="loss", kl_coef=0.1,
        **_):
    def loss_fn(params, batch, rng):
        del rng
        out = hydra.forward(params, model_cfg, batch["tokens_BxL"], valid_BxL=batch["valid_BxL"],
                            roles=("policy", "value", "teacher"))
        return a2c_loss(out["policy"][:, :-1], out["teacher"][:, :-1], out["value"][:, :-1],
                        _shift(batch["tokens_BxL"]), _shift(batch["rewards_BxL"]),
                        _shift(batch["policy_mask_BxL"]), alpha=alpha, value_coef=value_coef,
                        entropy_coef=entropy_coef, kl_mode=kl_mode, kl_coef=kl_coef)
    return loss_fn


_LOSSES = {"lm": _sft, "sft": _sft, "pref_rm": _pref_rm, "rule_rm": _rule_rm, "rl": _rl}


def loss_fn_for_stage(stage: str, model_cfg, **loss_kwargs) -> Callable:
    """(params, batch, rng) -> (loss, metrics) for a stage, via hydra.forward.

    loss_kwargs are the loss knobs: pref_rm aux_weight / centring_coef; rl alpha,
    value_coef, entropy_coef, kl_mode, kl_coef.
    """
    if stage not in _LOSSES:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
    return _LOSSES[stage](model_cfg, **loss_kwargs)


def batch_shapes(stage: str, batch_size: int, seq_len: int,
                 num_candidates: int = NUM_CANDIDATES) -> dict[str, jax.ShapeDtypeStruct]:
    """Global batch layout of a stage. For pref_rm, batch_size counts sequences
    (batch_size // num_candidates comparisons)."""
    i32, f32, b = jnp.int32, jnp.float32, jnp.bool_
    S = jax.ShapeDtypeStruct
    if stage in ("lm", "sft"):
        return {"tokens_BxL": S((batch_size, seq_len), i32), "valid_BxL": S((batch_size, seq_len), b),
                "loss_mask_BxL": S((batch_size, seq_len), f32)}
    if stage == "pref_rm":
        n, k = batch_size // num_candidates, num_candidates
        if n == 0:
            raise ValueError(f"pref_rm batch of {batch_size} sequences < {k} candidates")
        return {"tokens_BxKxL": S((n, k, seq_len), i32), "valid_BxKxL": S((n, k, seq_len), b),
                "last_index_BxK": S((n, k), i32), "chosen_B": S((n,), i32),
                "candidate_valid_BxK": S((n, k), b), "aux_target_BxK": S((n, k), f32),
                "aux_mask_BxK": S((n, k), b)}
    if stage == "rule_rm":
        return {"tokens_BxL": S((batch_size, seq_len), i32), "valid_BxL": S((batch_size, seq_len), b),
                "answer_index_B": S((batch_size,), i32), "broken_B": S((batch_size,), i32)}
    if stage == "rl":
        return {"tokens_BxL": S((batch_size, seq_len), i32), "valid_BxL": S((batch_size, seq_len), b),
                "policy_mask_BxL": S((batch_size, seq_len), f32),
                "rewards_BxL": S((batch_size, seq_len), f32)}
    raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")


def example_batch(stage: str, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0,
                  num_candidates: int = NUM_CANDIDATES) -> dict[str, np.ndarray]:
    """A deterministic random batch with the stage's layout (tests, benchmarks)."""
    rs = np.random.RandomState(seed)
    shapes = batch_shapes(stage, batch_size, seq_len, num_candidates)
    out = {}
    for name, s in shapes.items():
        if name.startswith("tokens"):
            out[name] = rs.randint(0, vocab_size, s.shape).astype(np.int32)
        elif name.startswith("valid") or name.startswith("candidate_valid"):
            out[name] = np.ones(s.shape, bool)
        elif name in ("loss_mask_BxL", "policy_mask_BxL"):
            out[name] = (rs.rand(*s.shape) < 0.5).astype(np.float32)
        elif name == "rewards_BxL":
            rewards = np.zeros(s.shape, np.float32)
            rewards[:, -1] = rs.randn(s.shape[0])
            out[name] = rewards
        elif name in ("last_index_BxK", "answer_index_B"):
            out[name] = rs.randint(seq_len // 2, seq_len, s.shape).astype(np.int32)
        elif name == "chosen_B":
            out[name] = rs.randint(0, num_candidates, s.shape).astype(np.int32)
        elif name == "broken_B":
            out[name] = rs.randint(0, 2, s.shape).astype(np.int32)
        elif name == "aux_target_BxK":
            out[name] = rs.randint(0, 2, s.shape).astype(np.float32)
        elif name == "aux_mask_BxK":
            out[name] = rs.rand(*s.shape) < 0.5
        else:
            raise AssertionError(name)
    return out


@dataclasses.dataclass
class StageSetup:
    """Everything needed to run or lower one stage's update step on a mesh."""
    stage: str
    step: TrainStep
    init_fn: Callable[[jax.Array], Any]   # rng -> sharded TrainState
    abstract_state: Any                    # ShapeDtypeStructs with shardings
    state_shardings: Any
    batch_shapes: dict
    loss_fn: Callable
    schedule: Callable


def build_stage(cfg, mesh, stage: str | None = None, total_steps: int | None = None,
                batch_size: int | None = None, seq_len: int | None = None,
                log_unsharded: bool = True, **loss_kwargs) -> StageSetup:
    """Optimizer, sharded state factory and jitted step for `stage` (default cfg.train.stage)."""
    stage = stage or cfg.train.stage
    rules = shd.rules_from_config(cfg.mesh)
    roles = STAGE_ROLES[stage]
    optimizer, schedule = make_optimizer(cfg.train, total_steps or cfg.train.steps)

    def init_params(rng):
        return hydra.init_params(cfg.model, rng, roles=roles)

    axes = hydra.param_logical_axes(cfg.model, roles=roles)
    if log_unsharded:
        shd.log_unsharded_params(axes, jax.eval_shape(init_params, jax.random.PRNGKey(0)),
                                 mesh, rules)
    init_fn, abstract_state, state_sh = sharded_state_factory(
        init_params, axes, stage, optimizer, mesh, rules)
    shapes = batch_shapes(stage, batch_size or cfg.train.batch_size, seq_len or cfg.train.seq_len)
    loss_fn = loss_fn_for_stage(stage, cfg.model, **loss_kwargs)
    step = make_train_step(cfg, loss_fn, mesh, state_sh, shapes, optimizer, schedule)
    return StageSetup(stage, step, init_fn, abstract_state, state_sh, shapes, loss_fn, schedule)
