"""Sweep members against the checkpoints they start from.

A stage that starts from another run's checkpoint (`train.init_from`, and for rl the
reward models `rl.pref_rm_from` / `rl.rule_rm_from`) only runs if its model is the
checkpoint's model. A sweep that varies a model key while every member starts from the
same checkpoint therefore cannot work for all of its members, and used to fail only at
run time, once the pod was up. These checks run at expansion (`sparrow sweep`, also with
`--dry-run`), without JAX:

* `check_shared_sources`: members that share a source must agree on every model key
  that defines the model (all of `model.*` but `FREE_MODEL_KEYS`);
* `check_stored_sources`: a source that is a local workdir with a checkpoint must have
  the member's model (the config its newest checkpoint stored).

Errors name the member, the key and the source.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

# Config keys naming a workdir whose checkpoint a run reads params from.
SOURCE_KEYS = ("train.init_from", "rl.pref_rm_from", "rl.rule_rm_from")

# model.* keys a run may set differently from the checkpoint it starts from: how the
# same params are computed (dtype of activations, rematerialisation, attention blocks,
# scanned or unrolled layers), the longest sequence (relative / rotary positions have no
# per-position params) and the init of heads the source lacks. Every other model key
# defines the params or what they compute (tests/launch/test_sweep_sources.py checks
# that none of these changes a param shape).
FREE_MODEL_KEYS = frozenset({"compute_dtype", "remat", "causal_block", "scan_layers", "max_len",
                             "init_std"})


class SourceMismatch(ValueError):
    """A member whose model differs from a checkpoint it starts from."""


def defining_model_keys(model: Mapping[str, Any]) -> list[str]:
    """The keys of a model config section that must equal the source checkpoint's."""
    return sorted(k for k in model if k not in FREE_MODEL_KEYS)


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def check_shared_sources(names: Sequence[str], configs: Sequence[Mapping[str, Any]]) -> None:
    """Raise SourceMismatch if members that start from the same checkpoint differ in a
    defining model key. `configs` are the members' full config dicts (`cfg.to_dict()`),
    `names` their member names, in the same order."""
    for source_key in SOURCE_KEYS:
        first_by_source: dict[str, int] = {}
        for i, config in enumerate(configs):
            source = _get(config, source_key)
            if not source:
                continue
            j = first_by_source.setdefault(source, i)
            if j == i:
                continue
            a, b = configs[j]["model"], config["model"]
            for key in defining_model_keys({**a, **b}):
                if a.get(key) != b.get(key):
                    raise SourceMismatch(
                        f"sweep members {j} ({names[j]}) and {i} ({names[i]}) both start from "
                        f"{source_key}={source!r} but set model.{key} to {a.get(key)!r} and "
                        f"{b.get(key)!r}: a checkpoint has one model shape. Sweep model.{key} "
                        f"only together with {source_key} (zip_axes), or drop it from the sweep")


def latest_stored_config(workdir: str) -> tuple[str, dict] | None:
    """(meta path, config dict) of the newest checkpoint step of a local workdir that
    stored its config; None for a gs:// URL or a workdir without one."""
    if workdir.startswith("gs://"):
        return None
    root = os.path.join(workdir, "checkpoints")
    try:
        steps = sorted((int(d) for d in os.listdir(root) if d.isdigit()), reverse=True)
    except OSError:
        return None
    for step in steps:
        path = os.path.join(root, str(step), "meta", "metadata")
        try:
            with open(path) as f:
                config = json.load(f).get("config")
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and isinstance(config.get("model"), dict):
            return path, config
    return None


def check_stored_sources(names: Sequence[str], configs: Sequence[Mapping[str, Any]]) -> None:
    """Raise SourceMismatch if a member's defining model keys differ from the config stored
    by the newest checkpoint of a local source workdir (keys the checkpoint predates are
    not compared)."""
    stored_by_source: dict[str, tuple[str, dict] | None] = {}
    for i, config in enumerate(configs):
        for source_key in SOURCE_KEYS:
            source = _get(config, source_key)
            if not source:
                continue
            if source not in stored_by_source:
                stored_by_source[source] = latest_stored_config(source)
            stored = stored_by_source[source]
            if stored is None:
                continue
            path, stored_config = stored
            theirs, ours = stored_config["model"], config["model"]
            for key in defining_model_keys(ours):
                if key in theirs and theirs[key] != ours[key]:
                    raise SourceMismatch(
                        f"sweep member {i} ({names[i]}): model.{key}={ours[key]!r} but "
                        f"{source_key}={source!r} was trained with model.{key}={theirs[key]!r} "
                        f"({path})")
