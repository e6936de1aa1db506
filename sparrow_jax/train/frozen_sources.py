"""Frozen parts of a train state kept by reference: a source workdir, a step, a fingerprint.

An rl checkpoint does not store what rl does not train (the trunk, the teacher and both
reward models' tops: ~450 GB at 70B). Its meta names where each came from instead:

    meta["frozen_sources"] = {part: {"workdir": str, "step": int, "role": str,
                                     "fingerprint": str, "via": str}}

`role` is the part's name in the source (the teacher is the SFT run's `policy`), `via` the
config key that named the source (for messages), `fingerprint` the part's fingerprint
(`train/fingerprint.py`) as the referencing run holds it. `read_part` restores just that
subtree of the source's checkpoint at that step and checks the fingerprint; a missing step
or a changed source is a CheckpointError naming the source workdir and what to do. A source
that itself references the part (an rl workdir used as train.init_from) is followed.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from sparrow_jax.train import storage
from sparrow_jax.train.checkpoints import Checkpointer, CheckpointError, checkpoint_dir
from sparrow_jax.train.fingerprint import fingerprint

META_KEY = "frozen_sources"


@dataclasses.dataclass(frozen=True)
class FrozenSource:
    workdir: str       # absolute path or URL
    step: int
    role: str          # the part's key in the source's params
    fingerprint: str   # of the part as the referencing run holds it
    via: str           # config key that named the source, e.g. "train.init_from"

    @property
    def label(self) -> str:
        return f"{self.workdir}@{self.step}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> "FrozenSource":
        return cls(workdir=str(record["workdir"]), step=int(record["step"]), role=str(record["role"]),
                   fingerprint=str(record["fingerprint"]), via=str(record.get("via", "source")))


def workdir_ref(path: str) -> str:
    """How a source workdir is recorded: absolute (local) or as given (a URL)."""
    return path if storage.is_url(path) else os.path.abspath(path)


def record(params, workdir: str, step: int, role: str, via: str) -> FrozenSource:
    """A reference to `params` (a part as this run holds it), read from `workdir`@`step`'s `role`."""
    return FrozenSource(workdir_ref(workdir), int(step), role, fingerprint(params), via)


def to_meta(sources: dict[str, FrozenSource]) -> dict:
    return {part: source.to_json() for part, source in sources.items()}


def from_meta(meta: dict) -> dict[str, FrozenSource]:
    """{part: FrozenSource} of a checkpoint's meta ({} if it references nothing)."""
    return {part: FrozenSource.from_json(r) for part, r in (meta.get(META_KEY) or {}).items()}


def _location(tree: dict, role: str) -> str | None:
    for place in ("params", "frozen"):
        if role in (tree.get(place) or {}):
            return place
    return None


def _target_from(stored, device, dtype):
    sharding = SingleDeviceSharding(device or jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(tuple(x.shape), jnp.dtype(dtype or x.dtype), sharding=sharding),
        stored, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def read_part(part: str, source: FrozenSource, user: str, target=None, device=None, dtype=None):
    """The frozen `part` re-read from its source and checked against its fingerprint.

    Args:
      user: what depends on it, for messages (e.g. "the rl checkpoint runs/rl/checkpoints/40").
      target: abstract tree (ShapeDtypeStructs with shardings) to restore onto; None restores
        the stored shapes onto one `device` (default the first), cast to `dtype` if given.
    Raises CheckpointError naming the source workdir when the step is gone, the part is missing
    or unreadable, or its fingerprint differs from the recorded one.
    """
    where = f"{user} takes its frozen {part} from {source.via}={source.workdir} at step {source.step}"
    advice = ("put that workdir back as it was when the run started, or start a new run in a new "
              "workdir")
    ckpt = Checkpointer(checkpoint_dir(source.workdir), async_save=False, create=False)
    try:
        steps = ckpt.steps()
        if source.step not in steps:
            held = f"checkpoints at steps {steps} only" if steps else "no checkpoints"
            raise CheckpointError(f"{where}, but {checkpoint_dir(source.workdir)} has {held}: {advice}")
        tree = ckpt.stored_tree(source.step)
        if tree is None:
            raise CheckpointError(f"{where}, but {checkpoint_dir(source.workdir)}/{source.step} "
                                  f"has no readable state metadata: {advice}")
        place = _location(tree, source.role)
        if place is not None:
            target = target if target is not None else _target_from(tree[place][source.role], device, dtype)
            value = ckpt.restore_partial(source.step, {place: {source.role: target}})[place][source.role]
        else:
            nested = from_meta(ckpt.read_meta(source.step)).get(source.role)
            if nested is None:
                raise CheckpointError(f"{where}, but that checkpoint holds no {source.role!r}: {advice}")
            value = read_part(source.role, nested, f"{checkpoint_dir(source.workdir)}/{source.step}",
                              target, device, dtype)
    finally:
        ckpt.close()
    found = fingerprint(value)
    if found != source.fingerprint:
        raise CheckpointError(
            f"{where}, but its {source.role!r} there has changed since (fingerprint {found}, "
            f"recorded {source.fingerprint}): {advice}")
    return value


def read_parts(sources: dict[str, FrozenSource], user: str, targets: dict | None = None,
               device=None, dtype=None) -> dict:
    """{part: tree} for every referenced part (`read_part`); `targets` maps part -> abstract tree."""
    return {part: read_part(part, source, user, (targets or {}).get(part), device, dtype)
            for part, source in sources.items()}
