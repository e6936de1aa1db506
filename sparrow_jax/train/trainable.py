"""Which top-level parts of the hydra each training stage updates.

The hydra's params are one dict keyed by 'trunk' and role names. A stage trains
some keys; the rest are frozen: they are passed to the loss but never receive
gradients or optimizer state.
"""
from __future__ import annotations

from typing import Any, Mapping

# stage -> top-level keys that train
TRAINABLE_KEYS = {
    "lm": ("trunk", "policy"),
    "sft": ("policy",),
    "pref_rm": ("pref_rm",),
    "rule_rm": ("rule_rm",),
    "rl": ("policy", "value"),
}

# stage -> roles whose tops the stage runs (and so must exist in the params)
STAGE_ROLES = {
    "lm": ("policy",),
    "sft": ("policy",),
    "pref_rm": ("pref_rm",),
    "rule_rm": ("rule_rm",),
    # The reward models ride along frozen in the state (an RL checkpoint saves only the trained
    # parts and names where the frozen ones come from: rl/checkpoint.py).
    "rl": ("policy", "value", "teacher", "pref_rm", "rule_rm"),
}


def trainable_keys(stage: str) -> tuple[str, ...]:
    if stage not in TRAINABLE_KEYS:
        raise ValueError(f"unknown stage {stage!r}; one of {sorted(TRAINABLE_KEYS)}")
    return TRAINABLE_KEYS[stage]


def split_params(params: Mapping[str, Any], stage: str) -> tuple[dict, dict]:
    """(trainable, frozen) dicts partitioning the top-level keys of `params`."""
    keys = trainable_keys(stage)
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"stage {stage!r} trains {missing} but params have only {sorted(params)}")
    trainable = {k: v for k, v in params.items() if k in keys}
    frozen = {k: v for k, v in params.items() if k not in keys}
    return trainable, frozen


def merge_params(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict:
    """The full params dict back from a split."""
    overlap = set(trainable) & set(frozen)
    if overlap:
        raise ValueError(f"keys both trainable and frozen: {sorted(overlap)}")
    return {**frozen, **trainable}
