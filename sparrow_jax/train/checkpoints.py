"""Checkpoints: orbax, async, keep-last-K, resumable, restorable onto another mesh.

A checkpoint at step N holds three items:
  `state`  the train state pytree (params, optimizer state, step, RNG), sharded;
  `meta`   JSON: the data iterator's position, run-specific host state (e.g. RL
           buffers), the config the run was made with (`config`), and anything
           else JSON-serialisable;
  `assets` JSON: small files the run depends on (the tokenizer model), base64.

Restoring asks for an abstract target pytree whose leaves carry NamedSharding,
so a checkpoint written on one mesh restores onto another. A latest checkpoint
that fails to restore (truncated, corrupt) is reported and the one before used.
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
    """

    def __init__(self, directory: str, every_steps: int = 100, keep: int = 3,
                 async_save: bool = True):
        self.directory = storage.run_path(directory)
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
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
        mismatch = None
        for step in reversed(steps):
            stored_meta = self.read_meta(step)
            problem = describe_mismatch(self._stored_shapes(step), abstract_state,
                                        stored_meta, config_json)
            if problem is not None:
                mismatch = f"checkpoint {self.directory}/{step}: {problem}"
                break
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    meta=ocp.args.JsonRestore(),
                    assets=ocp.args.JsonRestore()))
            except Exception as err:  # orbax/tensorstore raise many kinds on bad bytes
                log.warning("checkpoint %s/%d is incomplete or corrupt (%s: %s); "
                            "falling back to the previous one", self.directory, step,
                            type(err).__name__, str(err).splitlines()[0][:200])
                continue
            assets = {name: base64.b64decode(data)
                      for name, data in (restored.assets or {}).items()}
            return Restored(step, restored.state, dict(restored.meta or {}), assets)
        if mismatch:
            raise CheckpointError(mismatch)
        raise CheckpointError(f"no usable checkpoint in {self.directory} (steps {steps}); "
                              "every one failed to restore, see the warnings above")

    def read_meta(self, step: int) -> dict:
        """The JSON meta item of a step ({} if unreadable)."""
        try:
            return json.loads((self.directory / str(step) / "meta" / "metadata").read_text())
        except (OSError, ValueError):
            return {}

    def _stored_shapes(self, step: int) -> dict[str, tuple] | None:
        try:
            metadata = self._manager.item_metadata(step)
            tree = metadata["state"]
            tree = getattr(tree, "tree", tree)  # orbax wraps the pytree in TreeMetadata
            if tree is None:
                return None
            leaves = jax.tree_util.tree_flatten_with_path(
                tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
            return {_path_name(path): tuple(leaf.shape) for path, leaf in leaves
                    if hasattr(leaf, "shape")}
        except Exception:  # unreadable metadata: let restore decide and fall back
            return None


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
