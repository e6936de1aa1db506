"""Checkpoints: orbax, async, keep-last-K, resumable, restorable onto another mesh.

A checkpoint at step N holds three items:
  `state`  the train state pytree (params, optimizer state, step, RNG), sharded; an rl
           checkpoint leaves out the frozen parts and names their sources in `meta`
           (`train/frozen_sources.py`);
  `meta`   JSON: the data iterator's position, run-specific host state (e.g. RL
           buffers), the config the run was made with (`config`), and anything
           else JSON-serialisable;
  `assets` JSON: small files the run depends on (the tokenizer model), base64.

Restoring asks for an abstract target pytree whose leaves carry NamedSharding,
so a checkpoint written on one mesh restores onto another. A latest checkpoint
that fails to restore (truncated, corrupt) is reported and the one before used.
`restore_partial` reads some subtrees of a step's state (e.g. another workdir's
trunk) without its optimizer state.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import signal
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from sparrow_jax.train import storage

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says what differs or is missing."""


def checkpoint_dir(workdir: str) -> str:
    """Where a workdir's step folders are."""
    return storage.join(workdir, "checkpoints")


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    meta: dict
    assets: dict[str, bytes]


class Checkpointer:
    """Saves every `every_steps` steps, keeps the last `keep`, saves on SIGTERM.

    Args:
      directory: where step folders go (created if missing).
      every_steps: save period in steps; `save(..., force=True)` ignores it.
      keep: how many of the most recent checkpoints to keep.
      async_save: write in a background thread while training goes on.
      create: make `directory` if missing (False to only read another run's checkpoints).
    """

    def __init__(self, directory: str, every_steps: int = 100, keep: int = 3,
                 async_save: bool = True, create: bool = True):
        self.directory = storage.run_path(directory)
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=create)
        # Handlers are named up front so a fresh process can read item metadata
        # (stored shapes) before it restores anything.
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler(),
                           "assets": ocp.JsonCheckpointHandler()})
        self._preempted = False

    # -- saving ---------------------------------------------------------------
    def should_save(self, step: int) -> bool:
        return self._preempted or (self.every_steps > 0 and step % self.every_steps == 0)

    def save(self, step: int, state: Any, meta: dict, assets: dict[str, bytes] | None = None,
             force: bool = False) -> bool:
        """Start saving `state` at `step`; returns whether a save was started."""
        if not (force or self.should_save(step)):
            return False
        if step in self._manager.all_steps():
            return False
        encoded = {name: base64.b64encode(data).decode("ascii")
                   for name, data in (assets or {}).items()}
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(_jsonable(meta)),
            assets=ocp.args.JsonSave(encoded)), force=True)
        return True

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    # -- preemption -----------------------------------------------------------
    @property
    def preempted(self) -> bool:
        return self._preempted

    def install_sigterm_handler(self) -> Callable[[], None]:
        """After SIGTERM, `should_save` is True and `preempted` tells the loop to stop.

        Returns a function that restores the previous handler.
        """
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            log.warning("SIGTERM: saving a checkpoint at the next step, then stopping")
            self._preempted = True

        signal.signal(signal.SIGTERM, on_sigterm)
        return lambda: signal.signal(signal.SIGTERM, previous)

    # -- restoring ------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore_latest(self, abstract_state: Any, config_json: str | None = None) -> Restored | None:
        """Restore the newest usable checkpoint, or None if there is none.

        A checkpoint that fails to read is logged as a warning and the previous
        one tried. If the checkpoints exist but none matches `abstract_state`
        (another model shape), raises CheckpointError saying what differs.
        """
        steps = self.steps()
        if not steps:
            return None
        for step in reversed(steps):
            try:
                return self._restore(step, abstract_state, config_json)
            except _Unreadable as err:
                log.warning("checkpoint %s/%d is incomplete or corrupt (%s); "
                            "falling back to the previous one", self.directory, step, err)
        raise CheckpointError(f"no usable checkpoint in {self.directory} (steps {steps}); "
                              "every one failed to restore, see the warnings above")

    def restore(self, step: int, abstract_state: Any, config_json: str | None = None) -> Restored:
        """Restore exactly `step`; CheckpointError if it is missing, unreadable or another shape."""
        if step not in self.steps():
            raise CheckpointError(f"no checkpoint {self.directory}/{step} (steps {self.steps()})")
        try:
            return self._restore(step, abstract_state, config_json)
        except _Unreadable as err:
            raise CheckpointError(f"checkpoint {self.directory}/{step} cannot be read: {err}") from None

    def _restore(self, step: int, abstract_state: Any, config_json: str | None) -> Restored:
        problem = describe_mismatch(self._stored_shapes(step), abstract_state,
                                    self.read_meta(step), config_json)
        if problem is not None:
            raise CheckpointError(f"checkpoint {self.directory}/{step}: {problem}")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                meta=ocp.args.JsonRestore(),
                assets=ocp.args.JsonRestore()))
        except Exception as err:  # orbax/tensorstore raise many kinds on bad bytes
            raise _Unreadable(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
        assets = {name: base64.b64decode(data) for name, data in (restored.assets or {}).items()}
        return Restored(step, restored.state, dict(restored.meta or {}), assets)

    def restore_partial(self, step: int, target: Any) -> Any:
        """Some subtrees of the state at `step`, e.g. {"frozen": {"trunk": abstract}}.

        `target` mirrors the stored state's nesting (dicts; TrainState fields are keys) and
        its leaves are ShapeDtypeStructs carrying the sharding to restore onto (dtypes are
        cast as stored -> wanted). Only those arrays are read; every process reads its own
        shards. Raises CheckpointError naming the directory if they cannot be read.
        """
        restore_args = jax.tree.map(
            lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
            target)
        try:
            with ocp.PyTreeCheckpointer() as reader:
                return reader.restore(self.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
                    target, restore_args=restore_args, partial_restore=True))
        except Exception as err:  # orbax/tensorstore raise many kinds on bad bytes
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} cannot be read: "
                f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None

    def stored_tree(self, step: int) -> dict | None:
        """The stored state's structure at `step` (leaves: metadata with .shape and .dtype), or None."""
        try:
            tree = self._manager.item_metadata(step)["state"]
            tree = getattr(tree, "tree", tree)  # orbax wraps the pytree in TreeMetadata
            return tree if isinstance(tree, dict) else None
        except Exception:  # unreadable metadata: the caller says what it needed
            return None

    def read_meta(self, step: int) -> dict:
        """The JSON meta item of a step ({} if unreadable)."""
        try:
            return json.loads((self.directory / str(step) / "meta" / "metadata").read_text())
        except (OSError, ValueError):
            return {}

    def _stored_shapes(self, step: int) -> dict[str, tuple] | None:
        tree = self.stored_tree(step)
        if tree is None:
            return None  # unreadable metadata: let restore decide and fall back
        leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
        return {_path_name(path): tuple(leaf.shape) for path, leaf in leaves
                if hasattr(leaf, "shape")}


class _Unreadable(Exception):
    """A checkpoint whose bytes fail to restore (message: the underlying error, one line)."""


def describe_mismatch(stored_shapes: dict[str, tuple] | None, abstract_state: Any,
                      stored_meta: dict, config_json: str | None) -> str | None:
    """Say how a stored checkpoint differs from what the run expects, or None."""
    if stored_shapes is None:
        return None
    wanted = {_path_name(path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    missing = sorted(set(wanted) - set(stored_shapes))
    extra = sorted(set(stored_shapes) - set(wanted))
    differ = sorted(k for k in set(wanted) & set(stored_shapes) if wanted[k] != stored_shapes[k])
    if not (missing or extra or differ):
        return None
    parts = []
    if differ:
        parts.append("shapes differ: " + "; ".join(
            f"{k} stored {stored_shapes[k]} vs expected {wanted[k]}" for k in differ[:5]))
    if missing:
        parts.append(f"missing in checkpoint: {', '.join(missing[:5])}")
    if extra:
        parts.append(f"not expected by this run: {', '.join(extra[:5])}")
    if config_json and "config" in stored_meta:
        diffs = config_differences(stored_meta["config"], json.loads(config_json), "model")
        if diffs:
            parts.append("model config differs: " + ", ".join(diffs[:10]))
    return "; ".join(parts)


def _path_name(path) -> str:
    """`params/policy/layers/...`: the same for a dataclass field and a dict key of that name."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def config_differences(stored: dict, current: dict, section: str) -> list[str]:
    """`section.key: stored A, now B` for every differing leaf of a config section."""
    out = []
    old, new = stored.get(section, {}), current.get(section, {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{section}.{key}: checkpoint {old.get(key)!r}, config {new.get(key)!r}")
    return out


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays inside meta to plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
