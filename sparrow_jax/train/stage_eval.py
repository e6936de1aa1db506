"""Held-out evaluation of a supervised stage.

  lm, sft   agent_nll: mean NLL per agent / search-query token of held-out dialogues
  pref_rm   accuracy: share of held-out comparisons whose chosen candidate has the top Elo
  rule_rm   auc/<rule id> per rule and macro auc over rules with both labels present
  both RMs  temperature, ece_before, ece_after: one temperature fitted on half the held-out set,
            expected calibration error on the other half before / after it (`calibration.py`)
"""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from sparrow_jax import distributed
from sparrow_jax.model import hydra
from sparrow_jax.train import calibration, stages
from sparrow_jax.train.trainable import merge_params


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = labels.astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy import stats  # here: half a second to import, and only rule_rm needs it
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _nll_fn(model_cfg):
    def fn(params, batch):
        out = hydra.forward(params, model_cfg, batch["tokens_BxL"],
                            positions_BxL=batch["positions_BxL"], valid_BxL=batch["valid_BxL"],
                            roles=("policy",))
        logp_BxLxV = jax.nn.log_softmax(out["policy"][:, :-1])
        targets = batch["tokens_BxL"][:, 1:, None]
        nll_BxL = -jnp.take_along_axis(logp_BxLxV, targets, axis=-1)[..., 0]
        mask = batch["loss_mask_BxL"][:, 1:].astype(jnp.float32)
        return (nll_BxL * mask).sum(axis=1), mask.sum(axis=1)
    return fn


def _pref_fn(model_cfg):
    return lambda params, batch: stages.pref_elo_BxK(params, model_cfg, batch)


def _rule_fn(model_cfg):
    return lambda params, batch: jax.nn.softmax(
        stages.rule_logits_Bx2(params, model_cfg, batch), axis=-1)[:, 1]


class StageEvaluator:
    """Jitted per-stage scoring plus host-side aggregation into metrics.

    Batches are global and the same on every process; each process scores its own rows
    (`batch_shardings`, on `mesh`) and the scores are gathered, so every process computes
    the same metrics.
    """

    def __init__(self, stage: str, model_cfg, rule_ids: list[str] | None = None, *,
                 mesh=None, batch_shardings=None):
        self.stage = stage
        self.rule_ids = list(rule_ids or [])
        eval_stage = "sft" if stage == "lm" else stage
        self.keys = stages.DEVICE_KEYS[eval_stage]
        make = {"sft": _nll_fn, "pref_rm": _pref_fn, "rule_rm": _rule_fn}[eval_stage]
        self._score = jax.jit(make(model_cfg))
        self.mesh = mesh
        self.shardings = batch_shardings

    def __call__(self, state, batches: Iterable[tuple[dict, int]]) -> dict[str, float]:
        params = merge_params(state.params, state.frozen)
        outputs, hosts = [], []
        for batch, rows in batches:
            device = {k: batch[k] for k in self.keys}
            if self.mesh is None:
                scored = jax.device_get(self._score(params, device))
            else:
                shardings = {k: self.shardings[k] for k in self.keys}
                scored = distributed.call_on_rows(lambda b: self._score(params, b), device,
                                                  self.mesh, shardings)
            outputs.append(jax.tree.map(lambda x: np.asarray(x)[:rows], scored))
            hosts.append({k: v[:rows] for k, v in batch.items()})
        if not outputs:
            return {}
        joined = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
        host = {k: np.concatenate([h[k] for h in hosts]) for k in hosts[0]}
        return getattr(self, f"_metrics_{'sft' if self.stage == 'lm' else self.stage}")(joined, host)

    @staticmethod
    def _metrics_sft(joined, host):
        nll_sum, count = joined
        return {"agent_nll": float(nll_sum.sum() / max(count.sum(), 1.0)),
                "eval_examples": float(len(count))}

    @staticmethod
    def _metrics_pref_rm(elo_BxK, host):
        masked = np.where(host["candidate_valid_BxK"], elo_BxK, -np.inf)
        accuracy = float(np.mean(masked.argmax(axis=1) == host["chosen_B"]))
        calibrated = calibration.calibrate_choice(masked, host["chosen_B"]) or {}
        return {"accuracy": accuracy, "eval_examples": float(len(elo_BxK)), **calibrated}

    def _metrics_rule_rm(self, p_broken_B, host):
        labels, rule_index = host["broken_B"], host["rule_index_B"]
        metrics, aucs = {}, []
        for index in np.unique(rule_index):
            chosen = rule_index == index
            auc = roc_auc(p_broken_B[chosen], labels[chosen])
            name = self.rule_ids[index] if index < len(self.rule_ids) else str(index)
            metrics[f"auc/{name}"] = auc
            if np.isfinite(auc):
                aucs.append(auc)
        metrics["macro_auc"] = float(np.mean(aucs)) if aucs else float("nan")
        metrics["auc_pooled"] = roc_auc(p_broken_B, labels)
        metrics["eval_examples"] = float(len(labels))
        metrics.update(calibration.calibrate_binary(p_broken_B, labels) or {})
        return metrics
