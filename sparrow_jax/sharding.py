"""Device mesh from config and logical-axis sharding rules.

Every parameter and key activation carries logical axis names (`embed`, `mlp`,
`heads`, `batch`, ...). One table of rules (`cfg.mesh.logical_axis_rules`) maps
each logical name to a mesh axis (`data`, `fsdp`, `tensor`), a tuple of them, or
None (replicated). `resolve_shardings` is the one resolver; everything that
needs a `NamedSharding` for a logical tree goes through it.

Resolution of one logical spec, dimension by dimension:
  * the first rule for the logical name whose mesh axes are all still unused in
    this spec wins (a mesh axis may shard at most one dimension);
  * a dimension whose size is not divisible by the product of its mesh-axis
    sizes falls back to replicated and is reported as a `Fallback`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from sparrow_jax.config import MESH_AXES, ConfigError, resolve_mesh_shape

log = logging.getLogger(__name__)

Rules = Sequence[tuple[str, Any]]


# ----------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------

def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes over `devices` (default: all).

    A -1 axis takes what the device count leaves; a shape that does not multiply
    to the device count is a ConfigError naming `mesh.shape`.
    """
    devices = list(jax.devices() if devices is None else devices)
    try:
        shape = resolve_mesh_shape(dict(mesh_cfg.shape), len(devices))
    except ConfigError as err:
        raise ConfigError(f"mesh.shape: {err}") from err
    sizes = tuple(shape[axis] for axis in MESH_AXES)
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def rules_from_config(mesh_cfg) -> tuple[tuple[str, Any], ...]:
    """The config's rules as tuples (ConfigDict round trips may turn them into lists)."""
    rules = []
    for logical, target in mesh_cfg.logical_axis_rules:
        if isinstance(target, list):
            target = tuple(target)
        rules.append((logical, target))
    return tuple(rules)


# ----------------------------------------------------------------------------
# Resolver
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Fallback:
    """A dimension a rule wanted to shard but could not (not divisible)."""
    path: str
    dim: int
    logical: str
    mesh_axes: tuple[str, ...]
    size: int
    shards: int

    def __str__(self):
        return (f"{self.path}: dim {self.dim} ({self.logical!r}, size {self.size}) is not "
                f"divisible by {'x'.join(self.mesh_axes)}={self.shards}; replicated")


def _as_axes(target) -> tuple[str, ...]:
    if target is None:
        return ()
    if isinstance(target, str):
        return (target,)
    return tuple(t for t in target if t is not None)


def _logical_names(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def _choose_axes(entry, rules: Rules, used: set[str]) -> tuple[tuple[str, ...], str | None]:
    """Mesh axes for one spec entry (a logical name or tuple of them) and the name that chose."""
    chosen: list[str] = []
    label = None
    for name in _logical_names(entry):
        for logical, target in rules:
            if logical != name:
                continue
            axes = _as_axes(target)
            if any(a in used or a in chosen for a in axes):
                continue
            chosen.extend(axes)
            label = name
            break
    return tuple(chosen), label


def _to_spec_entry(axes: tuple[str, ...]):
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def logical_to_mesh_spec(logical_spec, rules: Rules) -> PartitionSpec:
    """Map a PartitionSpec of logical names to one of mesh axes (no shape checks)."""
    used: set[str] = set()
    out = []
    for entry in logical_spec:
        axes, _ = _choose_axes(entry, rules, used)
        used.update(axes)
        out.append(_to_spec_entry(axes))
    return PartitionSpec(*out)


def resolve_spec(logical_spec, shape: Sequence[int], mesh_shape: dict[str, int], rules: Rules,
                 path: str = "") -> tuple[PartitionSpec, list[Fallback]]:
    """Like `logical_to_mesh_spec`, replicating dims that the mesh does not divide."""
    entries = tuple(logical_spec)
    if len(entries) > len(shape):
        raise ValueError(f"{path}: logical spec {logical_spec} has more dims than shape {shape}")
    used: set[str] = set()
    out, fallbacks = [], []
    for dim, entry in enumerate(entries):
        axes, label = _choose_axes(entry, rules, used)
        shards = math.prod(mesh_shape[a] for a in axes)
        if axes and shape[dim] % shards:
            fallbacks.append(Fallback(path, dim, label, axes, int(shape[dim]), shards))
            axes = ()
        used.update(axes)
        out.append(_to_spec_entry(axes))
    return PartitionSpec(*out), fallbacks


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec) or x is None


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def resolve_shardings(logical_axes_tree, shapes_tree, mesh: Mesh, rules: Rules):
    """NamedSharding tree for a logical-axes tree, plus the list of Fallbacks.

    Args:
      logical_axes_tree: pytree whose leaves are PartitionSpecs of logical names
        (None = fully replicated).
      shapes_tree: same structure; leaves with `.shape` (arrays or ShapeDtypeStructs),
        or None to skip divisibility checks.
      mesh: the device mesh.
      rules: (logical name, mesh axes) pairs, first match wins.
    """
    mesh_shape = dict(mesh.shape)
    fallbacks: list[Fallback] = []
    paths_specs = jax.tree_util.tree_flatten_with_path(logical_axes_tree, is_leaf=_is_spec)
    leaves, treedef = paths_specs
    if shapes_tree is None:
        shapes = [None] * len(leaves)
    else:
        shapes = treedef.flatten_up_to(shapes_tree)
    out = []
    for (path, spec), shaped in zip(leaves, shapes):
        spec = PartitionSpec() if spec is None else spec
        if shaped is None:
            mesh_spec = logical_to_mesh_spec(spec, rules)
        else:
            mesh_spec, fb = resolve_spec(spec, shaped.shape, mesh_shape, rules, _path_str(path))
            fallbacks.extend(fb)
        out.append(NamedSharding(mesh, mesh_spec))
    return jax.tree_util.tree_unflatten(treedef, out), fallbacks


def shardings_for(logical_axes_tree, mesh: Mesh, rules: Rules, shapes_tree=None):
    """`resolve_shardings` that logs its fallbacks and returns only the shardings."""
    shardings, fallbacks = resolve_shardings(logical_axes_tree, shapes_tree, mesh, rules)
    for fb in fallbacks:
        log.warning("sharding fallback: %s", fb)
    return shardings


def abstract_with_shardings(shapes_tree, shardings_tree):
    """ShapeDtypeStructs carrying shardings: abstract, sharded inputs for `.lower()`."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes_tree, shardings_tree)


# ----------------------------------------------------------------------------
# Report of what no rule shards
# ----------------------------------------------------------------------------

def unsharded_params_report(logical_axes_tree, shapes_tree, mesh: Mesh, rules: Rules,
                            ) -> list[dict[str, Any]]:
    """Params whose resolved sharding uses no mesh axis, largest first.

    Each entry: {'path', 'shape', 'bytes', 'logical'}. Fallbacks count as unsharded
    when they leave the whole param replicated.
    """
    shardings, _ = resolve_shardings(logical_axes_tree, shapes_tree, mesh, rules)
    flat_sh = jax.tree_util.tree_leaves_with_path(shardings)
    flat_shapes = jax.tree_util.tree_leaves(shapes_tree)
    flat_logical = jax.tree_util.tree_leaves(logical_axes_tree, is_leaf=_is_spec)
    rows = []
    for (path, sharding), shaped, logical in zip(flat_sh, flat_shapes, flat_logical):
        if any(entry is not None for entry in sharding.spec):
            continue
        nbytes = int(np.prod(shaped.shape, dtype=np.int64)) * np.dtype(shaped.dtype).itemsize
        rows.append({"path": _path_str(path), "shape": tuple(shaped.shape), "bytes": nbytes,
                     "logical": logical})
    rows.sort(key=lambda r: -r["bytes"])
    return rows


def format_unsharded_report(rows: Iterable[dict[str, Any]], limit: int = 20) -> str:
    rows = list(rows)
    if not rows:
        return "every parameter is sharded by some rule"
    total = sum(r["bytes"] for r in rows)
    lines = [f"{len(rows)} params no rule shards ({total / 2**20:.1f} MiB replicated per device):"]
    for r in rows[:limit]:
        lines.append(f"  {r['path']:60s} {str(r['shape']):20s} {r['bytes'] / 2**20:9.2f} MiB "
                     f"logical={r['logical']}")
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more")
    return "\n".join(lines)


def log_unsharded_params(logical_axes_tree, shapes_tree, mesh: Mesh, rules: Rules) -> None:
    """Start-up log line(s) listing replicated params."""
    log.info("%s", format_unsharded_report(
        unsharded_params_report(logical_axes_tree, shapes_tree, mesh, rules)))


# ----------------------------------------------------------------------------
# Activation constraints while tracing
# ----------------------------------------------------------------------------

@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules):
    """Set the mesh and flax logical rules so `nn.with_logical_constraint` applies.

    Enter it around tracing (the first call or `.lower()` of a jitted step).
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        yield


def constrain(x, logical_spec: Sequence[str | None]):
    """Constrain an activation by logical names (no-op outside `activation_sharding`)."""
    return nn.with_logical_constraint(x, PartitionSpec(*logical_spec))


def batch_spec(ndim: int, rules: Rules, leading: int = 0) -> PartitionSpec:
    """Mesh spec for a batch array: `leading` unsharded dims, then 'batch', rest replicated."""
    logical = (None,) * leading + ("batch",) + (None,) * (ndim - leading - 1)
    return logical_to_mesh_spec(logical, rules)
