"""Read a workdir's checkpoint for inference: params only, never the optimizer state.

A workdir written by `sparrow train` holds `checkpoints/<step>/{state,meta,assets}` (see
`sparrow_jax/train/checkpoints.py`): `state` is a TrainState whose `params` (trainable) and `frozen`
subtrees together are the hydra params; `meta` holds the run's `config`; `assets` the tokenizer.
Evaluation restores just `params` and `frozen` (orbax partial restore), so it does not depend on which
optimizer a stage used, and reads the stored tree's own structure, so it works for any stage (an `rl`
checkpoint's frozen subtree may also hold the teacher and both reward models).

Nothing here writes to the workdir: a missing or empty one is a `WorkdirError`.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from sparrow_jax.train import storage
from sparrow_jax.train.init_from import checkpoint_dir

log = logging.getLogger(__name__)

TOKENIZER_ASSET = "tokenizer.model"


class WorkdirError(ValueError):
    """A workdir that cannot be used; the message says what is wrong and what to run first."""


@dataclasses.dataclass(frozen=True)
class StoredParams:
    """params: full hydra params {trunk, <roles>} (numpy-backed jax arrays on one device).
    config: the config dict the run was made with (meta `config`).  step: the checkpoint's step.
    tokenizer_model: the serialized SentencePiece model from the assets, or None."""
    workdir: str
    step: int
    params: dict
    config: dict
    tokenizer_model: bytes | None

    @property
    def stage(self) -> str:
        return self.config.get("train", {}).get("stage", "?")


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps with a checkpoint folder (sorted); [] if none or no workdir. Reads only."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.isdir(os.path.join(directory, name, "state")))


def _manager(workdir: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(checkpoint_dir(workdir)),
        options=ocp.CheckpointManagerOptions(create=False),  # never writes (read_only logs warnings)
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler(),
                       "assets": ocp.JsonCheckpointHandler()})


def _stored_subtrees(manager, step: int) -> dict[str, Any]:
    """{'params': tree, 'frozen': tree} of the stored state's metadata (leaves have .shape, .dtype)."""
    metadata = manager.item_metadata(step)["state"]
    tree = getattr(metadata, "tree", metadata)
    if not isinstance(tree, dict) or "params" not in tree:
        raise WorkdirError(f"{checkpoint_dir(manager.directory)}/{step}: the stored state has no params")
    return {k: tree[k] for k in ("params", "frozen") if tree.get(k) is not None}


def _restore_step(manager, step: int, device) -> tuple[dict, dict, dict]:
    sharding = SingleDeviceSharding(device)
    is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")  # noqa: E731
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding),
                          _stored_subtrees(manager, step), is_leaf=is_leaf)
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=x.shape, dtype=x.dtype), target)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True),
        meta=ocp.args.JsonRestore(), assets=ocp.args.JsonRestore()))
    params = {**restored.state.get("frozen", {}), **restored.state["params"]}
    return params, dict(restored.meta or {}), dict(restored.assets or {})


def read_params(workdir: str, step: int | None = None, device=None) -> StoredParams:
    """Restore the hydra params of `workdir`'s checkpoint at `step` (default: the newest usable one).

    A newest checkpoint that fails to read (truncated, corrupt) is skipped with a warning, as training
    does; an explicit `step` must restore. Raises WorkdirError naming the directory and what to run.
    """
    device = device or jax.devices()[0]
    storage.require_local(workdir, "workdir", WorkdirError)
    if not os.path.isdir(workdir):
        raise WorkdirError(f"workdir {workdir} does not exist")
    steps = checkpoint_steps(workdir)
    if not steps:
        raise WorkdirError(f"no checkpoint in {workdir} (nothing under {checkpoint_dir(workdir)})")
    if step is not None and step not in steps:
        raise WorkdirError(f"no checkpoint at step {step} in {workdir}; it has steps {steps}")
    manager = _manager(workdir)
    try:
        for candidate in ([step] if step is not None else list(reversed(steps))):
            try:
                params, meta, assets = _restore_step(manager, candidate, device)
            except WorkdirError:
                raise
            except Exception as err:  # orbax/tensorstore raise many kinds on bad bytes
                if step is not None:
                    raise WorkdirError(f"checkpoint {checkpoint_dir(workdir)}/{step} cannot be read: "
                                       f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
                log.warning("checkpoint %s/%d cannot be read (%s); trying the previous one",
                            checkpoint_dir(workdir), candidate, type(err).__name__)
                continue
            config = meta.get("config")
            if not config:
                raise WorkdirError(f"checkpoint {checkpoint_dir(workdir)}/{candidate} stores no config")
            tokenizer = assets.get(TOKENIZER_ASSET)
            return StoredParams(workdir, candidate, params, config,
                                base64.b64decode(tokenizer) if tokenizer else None)
    finally:
        manager.close()
    raise WorkdirError(f"no readable checkpoint in {workdir} (steps {steps}); see the warnings above")


def shape_differences(params: dict, expected: dict, limit: int = 5) -> list[str]:
    """Where `params` (arrays) and `expected` (e.g. `jax.eval_shape(hydra.init_params, ...)`) differ in
    shape, for the roles both have: ["policy/layers/mlp/wi: stored (2, 128, 512) vs config (2, 64, 256)"]."""
    def flat(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(x)) for path, x in leaves}

    shared = [k for k in params if k in expected]
    stored, wanted = flat({k: params[k] for k in shared}), flat({k: expected[k] for k in shared})
    out = [f"{name}: stored {stored.get(name)} vs config {wanted.get(name)}"
           for name in sorted(set(stored) | set(wanted)) if stored.get(name) != wanted.get(name)]
    return out[:limit]

