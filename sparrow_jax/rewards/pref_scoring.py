"""Preference reward model scores (Elo) and their normalisation for the RL reward.

The preference RM outputs an Elo per token; a candidate's score is read at the
last token of its final agent turn (its eot) by `read_elo`, which also adds the
RM's scaled mean log-likelihood of that turn when the model has
`pref_rm_likelihood` (one readout for training, RL and evaluation). For the RL reward the Elo is
normalised against the starting policy: `EloNormaliser` holds the mean and
standard deviation of the RM's Elo on that policy's samples (docs/recipe.md
section 6), accumulated batch by batch, with a JSON-serialisable state.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from sparrow_jax.model import hydra

__all__ = ["pref_elo", "read_elo", "EloNormaliser"]


def read_elo(outputs, last_index_B, turn_start_B, slots_BxK=None):
    """elo_B float32: a candidate's score from `hydra.forward(..., roles=("pref_rm",))` outputs.

    The Elo head at `last_index_B` (the eot of the candidate's final agent turn), plus, if
    the outputs have 'pref_rm_next_logp' (`model.pref_rm_likelihood`), its mean over slots
    turn_start .. last - 1: the RM's scaled mean log-prob of that turn's tokens after its
    role token (text and eot). `turn_start_B` is the slot of that role token.
    `slots_BxK`: the slots the outputs hold when the forward read only some
    (`hydra.forward(read_BxK=...)`); they must include `last_index_B` and every slot of
    the turn. Default: all L slots.
    """
    last_Bx1 = jnp.asarray(last_index_B, jnp.int32)[:, None]
    if slots_BxK is None:
        elo_B = jnp.take_along_axis(outputs["pref_rm"], last_Bx1, axis=1)[:, 0]
        slots_BxK = jnp.arange(outputs["pref_rm"].shape[1], dtype=jnp.int32)[None, :]
    else:
        elo_B = jnp.sum(jnp.where(slots_BxK == last_Bx1, outputs["pref_rm"], 0.0), axis=1)
    elo_B = elo_B.astype(jnp.float32)
    if "pref_rm_next_logp" not in outputs:
        return elo_B
    logp_BxK = outputs["pref_rm_next_logp"]
    start_Bx1 = jnp.asarray(turn_start_B, jnp.int32)[:, None]
    in_turn_BxK = (slots_BxK >= start_Bx1) & (slots_BxK < last_Bx1)
    mean_B = (jnp.sum(jnp.where(in_turn_BxK, logp_BxK, 0.0), axis=1)
              / jnp.maximum(jnp.sum(in_turn_BxK, axis=1), 1))
    return elo_B + mean_B


def pref_elo(params, model_cfg, tokens_BxL, valid_BxL, last_index_B, turn_start_B,
             positions_BxL=None):
    """elo_B float32: the preference RM's score of each row's final agent turn (`read_elo`).

    Args:
      params: hydra params holding `trunk` and `pref_rm`.
      tokens_BxL / valid_BxL: context + candidate, rendered (padding = False).
      last_index_B: int slot of the eot of the candidate's final agent turn.
      turn_start_B: int slot of that turn's role token.
      positions_BxL: default arange(L).
    Jittable (close over model_cfg).
    """
    outputs = hydra.forward(params, model_cfg, tokens_BxL, positions_BxL, valid_BxL,
                            roles=("pref_rm",))
    return read_elo(outputs, last_index_B, turn_start_B)


@dataclasses.dataclass(frozen=True)
class EloNormaliser:
    """(elo - mean) / std with mean and std of the starting policy's Elo.

    Immutable: `update` returns a new normaliser. `count` = number of Elo values
    seen; `m2` = sum of squared deviations from the mean (Chan et al.'s parallel
    algorithm, so batches can be merged in any order). `std` is the population
    standard deviation, floored at `min_std` when normalising.
    """
    mean: float = 0.0
    m2: float = 0.0
    count: int = 0
    min_std: float = 1e-6

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 1.0

    @classmethod
    def fit(cls, elo, min_std: float = 1e-6) -> "EloNormaliser":
        """From an array of Elo values (any shape) of the starting policy's samples."""
        return cls(min_std=min_std).update(elo)

    def update(self, elo, mask=None) -> "EloNormaliser":
        """Merge more Elo values (any shape; `mask` True = use) into the statistics."""
        x = np.asarray(elo, np.float64).ravel()
        if mask is not None:
            x = x[np.asarray(mask, bool).ravel()]
        if x.size == 0:
            return self
        n_b, mean_b = x.size, float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.count + n_b
        delta = mean_b - self.mean
        return dataclasses.replace(
            self, count=n, mean=self.mean + delta * n_b / n,
            m2=self.m2 + m2_b + delta * delta * self.count * n_b / n)

    def normalise(self, elo):
        """(elo - mean) / max(std, min_std), same shape; numpy or jax arrays (also under jit)."""
        return (elo - self.mean) / max(self.std, self.min_std)

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state; `EloNormaliser.from_state` inverts it."""
        return {"mean": float(self.mean), "m2": float(self.m2), "count": int(self.count),
                "min_std": float(self.min_std), "std": float(self.std)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "EloNormaliser":
        return cls(mean=float(state["mean"]), m2=float(state["m2"]), count=int(state["count"]),
                   min_std=float(state.get("min_std", 1e-6)))
