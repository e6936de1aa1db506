"""Read a workdir's checkpoint for inference: params only, never the optimizer state.

A workdir written by `sparrow train` holds `checkpoints/<step>/{state,meta,assets}` (see
`sparrow_jax/train/checkpoints.py`): `state` is a TrainState whose `params` (trainable) and `frozen`
subtrees together are the hydra params; `meta` holds the run's `config`; `assets` the tokenizer.
Evaluation restores just `params` and `frozen` (orbax partial restore), so it does not depend on which
optimizer a stage used, and reads the stored tree's own structure, so it works for any stage. An `rl`
checkpoint stores only what rl trains: its frozen parts (trunk, teacher, both reward models) are named in
its meta by source workdir, step and fingerprint (`train/frozen_sources.py`) and re-read from there, their
fingerprints checked (an older rl checkpoint holding them in its frozen subtree is read as it is).

Nothing here writes to the workdir: a missing or empty one is a `WorkdirError`.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from sparrow_jax.train import frozen_sources, storage
from sparrow_jax.train.checkpoints import CheckpointError, checkpoint_dir

log = logging.getLogger(__name__)

TOKENIZER_ASSET = "tokenizer.model"


class WorkdirError(ValueError):
    """A workdir that cannot be used; the message says what is wrong and what to run first."""


class FrozenSourceError(WorkdirError):
    """An rl checkpoint's frozen source (another workdir) is missing or has changed; the message
    names it and what to do."""


@dataclasses.dataclass(frozen=True)
class StoredParams:
    """params: full hydra params {trunk, <roles>} (numpy-backed jax arrays on one device).
    config: the config dict the run was made with (meta `config`).  step: the checkpoint's step.
    tokenizer_model: the serialized SentencePiece model from the assets, or None.
    sources: {part: FrozenSource} of the parts re-read from the sources an rl checkpoint names."""
    workdir: str
    step: int
    params: dict
    config: dict
    tokenizer_model: bytes | None
    sources: dict = dataclasses.field(default_factory=dict)

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


def _stored_subtrees(manager, step: int, roles) -> dict[str, Any]:
    """{'params': tree, 'frozen': tree} of the stored state's metadata (leaves have .shape, .dtype),
    keeping only `roles` (None: all)."""
    metadata = manager.item_metadata(step)["state"]
    tree = getattr(metadata, "tree", metadata)
    if not isinstance(tree, dict) or "params" not in tree:
        raise WorkdirError(f"{checkpoint_dir(manager.directory)}/{step}: the stored state has no params")
    return {k: {role: sub for role, sub in tree[k].items() if roles is None or role in roles}
            for k in ("params", "frozen") if tree.get(k)}


def _restore_step(manager, step: int, device, roles) -> tuple[dict, dict, dict]:
    sharding = SingleDeviceSharding(device)
    is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")  # noqa: E731
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding),
                          _stored_subtrees(manager, step, roles), is_leaf=is_leaf)
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=x.shape, dtype=x.dtype), target)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True),
        meta=ocp.args.JsonRestore(), assets=ocp.args.JsonRestore()))
    params = {**(restored.state.get("frozen") or {}), **(restored.state.get("params") or {})}
    return params, dict(restored.meta or {}), dict(restored.assets or {})


def _read_referenced(workdir: str, step: int, meta: dict, roles, device) -> tuple[dict, dict]:
    """({part: params}, {part: FrozenSource}) of the frozen parts an rl checkpoint names, re-read."""
    sources = {part: source for part, source in frozen_sources.from_meta(meta).items()
               if roles is None or part in roles}
    user = f"the rl checkpoint {checkpoint_dir(workdir)}/{step}"
    for part, source in sources.items():
        storage.require_local(source.workdir, f"{user}'s {part} source", FrozenSourceError)
    dtype = (meta.get("config") or {}).get("model", {}).get("param_dtype")  # as the rl run held them
    try:
        return frozen_sources.read_parts(sources, user, device=device, dtype=dtype), sources
    except CheckpointError as err:
        raise FrozenSourceError(str(err)) from None


def read_params(workdir: str, step: int | None = None, device=None,
                roles: tuple[str, ...] | None = None) -> StoredParams:
    """Restore the hydra params of `workdir`'s checkpoint at `step` (default: the newest usable one).

    roles: the parts to read ('trunk', 'policy', ...); None reads every part the checkpoint has or names.
    A newest checkpoint that fails to read (truncated, corrupt) is skipped with a warning, as training
    does; an explicit `step` must restore. Raises WorkdirError naming the directory and what to run,
    or, for an rl checkpoint, naming a frozen source that is missing or has changed since.
    """
    device = device or jax.local_devices()[0]
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
                params, meta, assets = _restore_step(manager, candidate, device, roles)
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
            referenced, sources = _read_referenced(workdir, candidate, meta, roles, device)
            tokenizer = assets.get(TOKENIZER_ASSET)
            return StoredParams(workdir, candidate, {**referenced, **params}, config,
                                base64.b64decode(tokenizer) if tokenizer else None, sources)
    finally:
        manager.close()
    raise WorkdirError(f"no readable checkpoint in {workdir} (steps {steps}); see the warnings above")


def read_config(workdir: str, step: int) -> dict:
    """The config dict in the meta of `workdir`'s checkpoint at `step` ({} if unreadable)."""
    try:
        path = os.path.join(checkpoint_dir(workdir), str(step), "meta", "metadata")
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("config") or {}
    except (OSError, ValueError):
        return {}


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

