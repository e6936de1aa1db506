"""Hyperparameter sweeps defined next to the experiment config.

An experiment file may define `get_sweep()` (optionally `get_sweep(variant)`)
returning a list of override dicts, built with these helpers:

    def get_sweep():
        return product(sweep_axis("train.learning_rate", [1e-3, 3e-4]),
                       sweep_axis("model.n_frozen_layers", [1, 2]))

`product` takes every combination, `zip_axes` pairs axes element by element,
`chain` concatenates sweeps. Each member becomes one `sparrow train` run in
ROOT/<member name>, where the name is built from the overrides alone (so it is
stable when members are added or reordered) and made unique with a short hash
when needed. Every member's config is validated before anything runs, including
against the checkpoints it starts from (`sweep_sources`: a sweep may not vary the
model while its members share one `train.init_from` or reward-model workdir).

No JAX import here: expanding and checking a 70B sweep takes milliseconds.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import inspect
import itertools
import json
import os
import re
from typing import Any, Iterable, Mapping, Sequence

Member = dict  # dotted config key -> value

MAX_NAME_LENGTH = 96
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._=,+-]+")


class SweepError(ValueError):
    """A sweep that cannot run; the message names the member and the key."""


# --- building sweeps -------------------------------------------------------------

def sweep_axis(key: str, values: Iterable[Any]) -> list[Member]:
    """One config key taking each of `values`: [{key: v0}, {key: v1}, ...]."""
    if not isinstance(key, str) or not key or key.startswith("-"):
        raise SweepError(f"sweep_axis key must be a dotted config key like 'train.seed', got {key!r}")
    values = list(values)
    if not values:
        raise SweepError(f"sweep_axis({key!r}): no values")
    return [{key: v} for v in values]


def _merge(parts: Sequence[Mapping[str, Any]]) -> Member:
    merged: Member = {}
    for part in parts:
        for key, value in part.items():
            if key in merged:
                raise SweepError(f"config key '{key}' is set by two combined axes")
            merged[key] = value
    return merged


def product(*sweeps: Sequence[Mapping[str, Any]]) -> list[Member]:
    """Every combination, the last sweep varying fastest."""
    return [_merge(combo) for combo in itertools.product(*sweeps)]


def zip_axes(*sweeps: Sequence[Mapping[str, Any]]) -> list[Member]:
    """Element-wise combination of equally long sweeps."""
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise SweepError(f"zip_axes: sweeps have different lengths {sorted(lengths)}")
    return [_merge(combo) for combo in zip(*sweeps)]


def chain(*sweeps: Sequence[Mapping[str, Any]]) -> list[Member]:
    """The members of each sweep, one after another."""
    return [dict(m) for s in sweeps for m in s]


# --- members: names, override strings ---------------------------------------------

def format_value(value: Any) -> str:
    """A value as `--config.a.b=VALUE` text that config.apply_overrides parses back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return repr(tuple(value) if isinstance(value, tuple) else list(value))
    return str(value)


def override_args(member: Mapping[str, Any]) -> list[str]:
    return [f"--config.{key}={format_value(value)}" for key, value in member.items()]


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Shortest dotted suffix of each key that is unique among `keys`."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if all(other == key or not (other == suffix or other.endswith("." + suffix))
                   for other in keys):
                break
        short[key] = suffix
    return short


def _digest(member: Mapping[str, Any]) -> str:
    text = json.dumps({k: format_value(v) for k, v in member.items()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def member_name(member: Mapping[str, Any], all_keys: Sequence[str] | None = None) -> str:
    """e.g. {'train.learning_rate': 0.001, 'model.n_frozen_layers': 1} ->
    'learning_rate=0.001,n_frozen_layers=1'.

    Keys are shortened to their shortest unique dotted suffix among `all_keys` (the
    sweep's keys, in the order the sweep defines them) and listed in that order. The
    name depends on the overrides and the sweep's keys, never on a member's position."""
    if not member:
        return "base"
    order = list(dict.fromkeys([*(all_keys or ()), *member]))
    short = _short_keys(order)
    parts = [f"{short[k]}={format_value(member[k])}" for k in order if k in member]
    name = _UNSAFE_RE.sub("_", ",".join(parts)).strip("._") or "member"
    if len(name) > MAX_NAME_LENGTH:
        name = f"{name[:MAX_NAME_LENGTH - 9]}-{_digest(member)}"
    return name


@dataclasses.dataclass(frozen=True)
class SweepMember:
    index: int
    overrides: dict
    name: str
    workdir: str

    @property
    def args(self) -> list[str]:
        return override_args(self.overrides)


def join_path(root: str, name: str) -> str:
    """ROOT/name for local paths and gs:// URLs alike."""
    return root.rstrip("/") + "/" + name if root.startswith("gs://") else os.path.join(root, name)


def expand(members: Sequence[Mapping[str, Any]], root: str) -> list[SweepMember]:
    """Name every member and give it ROOT/<name>; names are unique (a hash is added on clashes)."""
    seen: dict[str, int] = {}
    for i, member in enumerate(members):
        if not isinstance(member, Mapping):
            raise SweepError(f"sweep member {i}: expected a dict of overrides, got {member!r}")
        key = json.dumps({k: format_value(v) for k, v in member.items()}, sort_keys=True)
        if key in seen:
            raise SweepError(f"sweep member {i} repeats member {seen[key]}: {dict(member)}")
        seen[key] = i
    all_keys = list(dict.fromkeys(k for m in members for k in m))  # first-appearance order
    names = [member_name(m, all_keys) for m in members]
    clashes = {n for n in names if names.count(n) > 1}
    out = []
    for i, (member, name) in enumerate(zip(members, names)):
        if name in clashes:
            name = f"{name[:MAX_NAME_LENGTH - 9]}-{_digest(member)}"
        out.append(SweepMember(i, dict(member), name, join_path(root, name)))
    return out


# --- loading and validating --------------------------------------------------------

def load_sweep(spec: str) -> list[Member]:
    """Call `get_sweep()` of `path.py[:variant]` (passing the variant if it takes one)."""
    from sparrow_jax.config import ConfigError, load_experiment_module
    path, _, variant = spec.partition(":")
    try:
        module = load_experiment_module(path)
    except ConfigError as err:
        raise SweepError(str(err)) from err
    get_sweep = getattr(module, "get_sweep", None)
    if get_sweep is None:
        raise SweepError(f"{path} defines no get_sweep()")
    takes_variant = bool(inspect.signature(get_sweep).parameters)
    members = get_sweep(variant) if (variant and takes_variant) else get_sweep()
    members = list(members)
    if not members:
        raise SweepError(f"{path}: get_sweep() returned no members")
    return members


def validate_members(config_spec: str, members: Sequence[SweepMember],
                     common_overrides: Sequence[str] = ()) -> None:
    """Load the config once, then apply each member's overrides; raise on the first bad one.

    `common_overrides` (`--config.a.b=v` given to `sparrow sweep`) apply to every member
    and may not set a key that the sweep itself varies.
    """
    from sparrow_jax.config import ConfigError, apply_overrides, load_experiment

    try:
        base = load_experiment(config_spec)
    except ConfigError:
        raise
    except ValueError as err:  # e.g. get_config() rejecting an unknown variant
        raise SweepError(f"{config_spec}: {err}") from err
    common_keys = {a.split("=", 1)[0][len("--config."):] for a in common_overrides}
    try:
        base = apply_overrides(base, common_overrides)
    except ConfigError as err:
        raise SweepError(f"command-line overrides: {err}") from err
    configs = []
    for member in members:
        clash = common_keys & set(member.overrides)
        if clash:
            raise SweepError(f"sweep member {member.index} ({member.name}): config key "
                             f"'{sorted(clash)[0]}' is both swept and set on the command line")
        try:
            configs.append(apply_overrides(base, member.args).to_dict())
        except ConfigError as err:
            raise SweepError(f"sweep member {member.index} ({member.name}): {err}") from err
    check_sources(members, configs)


def check_sources(members: Sequence[SweepMember], configs: Sequence[dict]) -> None:
    """Members must have the model of the checkpoints they start from (sweep_sources)."""
    from sparrow_jax import sweep_sources
    names = [m.name for m in members]
    try:
        sweep_sources.check_shared_sources(names, configs)
        sweep_sources.check_stored_sources(names, configs)
    except sweep_sources.SourceMismatch as err:
        raise SweepError(str(err)) from err


def plan(config_spec: str, root: str, common_overrides: Sequence[str] = ()) -> list[SweepMember]:
    """load_sweep + expand + validate_members: the members, all checked."""
    members = expand(load_sweep(config_spec), root)
    validate_members(config_spec, members, common_overrides)
    return members


# --- results across members ---------------------------------------------------------

DONE_MARKER = "DONE"  # written in a member's workdir by `sparrow sweep --local` on success


def _find(workdir: str, filename: str) -> str | None:
    """workdir/filename, else the first workdir/*/filename (e.g. a logs/ or eval/ subdir)."""
    direct = os.path.join(workdir, filename)
    if os.path.isfile(direct):
        return direct
    if os.path.isdir(workdir):
        for sub in sorted(os.listdir(workdir)):
            candidate = os.path.join(workdir, sub, filename)
            if os.path.isfile(candidate):
                return candidate
    return None


def _newest_report(workdir: str) -> str | None:
    """The most recently written report.json: in workdir, a subdir, or an eval/* dir.

    `sparrow eval` writes WORKDIR/eval/step_N[_atK]/report.json by default; the
    newest is the evaluation the user ran last.
    """
    patterns = ("report.json", "*/report.json", "eval/*/report.json")
    found = {path for pattern in patterns
             for path in glob.glob(os.path.join(glob.escape(workdir), pattern))}
    return max(found, key=os.path.getmtime) if found else None


def _flatten(tree: Any, prefix: str, out: dict) -> dict:
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(tree, (int, float, str, bool)) or tree is None:
        out[prefix] = tree
    return out


def read_results(workdir: str) -> dict:
    """{'status': done|started|missing, 'values': {...}} for one member's workdir.

    values: every key of the last metrics.jsonl record (`step`, `split`, metrics),
    `<split>/<key>` from the last record of each split, and `report.<dotted key>`
    for the scalars of the newest report.json.
    """
    if os.path.isfile(os.path.join(workdir, DONE_MARKER)):
        status = "done"
    else:
        status = "started" if os.path.isdir(workdir) else "missing"
    values: dict[str, Any] = {}
    metrics_path = _find(workdir, "metrics.jsonl")
    if metrics_path:
        last_by_split: dict[str, dict] = {}
        last: dict = {}
        with open(metrics_path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a half-written last line of a running job
                last = record
                last_by_split[str(record.get("split", "train"))] = record
        for split, record in last_by_split.items():
            for key, value in record.items():
                if key not in ("split",):
                    values[f"{split}/{key}"] = value
        values.update(last)
    report_path = _newest_report(workdir)
    if report_path:
        try:
            with open(report_path) as f:
                _flatten(json.load(f), "report", values)
        except json.JSONDecodeError:
            pass
    return {"status": status, "values": values}


def default_metric_columns(results: Sequence[dict]) -> list[str]:
    """`step` then every metric of the members' last records, sorted."""
    keys = set()
    for r in results:
        keys |= {k for k in r["values"] if "/" not in k and not k.startswith("report.")}
    has_step = "step" in keys
    keys -= {"step", "split"}
    return (["step"] if has_step else []) + sorted(keys)


def summarize(members: Sequence[SweepMember], metrics: Sequence[str] | None = None) -> list[dict]:
    """One row per member: name, workdir, overrides, status and the chosen metrics."""
    results = [read_results(m.workdir) for m in members]
    columns = list(metrics) if metrics else default_metric_columns(results)
    return [{"name": m.name, "workdir": m.workdir, "overrides": dict(m.overrides),
             "status": r["status"], "metrics": {c: r["values"].get(c) for c in columns}}
            for m, r in zip(members, results)]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict]) -> str:
    """Aligned text table: name, override keys, status, metric columns."""
    if not rows:
        return "(no members)"
    override_keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
    metric_keys = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    header = ["name", *override_keys, "status", *metric_keys]
    body = [[r["name"], *(_cell(r["overrides"].get(k)) for k in override_keys), r["status"],
             *(_cell(r["metrics"].get(k)) for k in metric_keys)] for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in [header, *body])
