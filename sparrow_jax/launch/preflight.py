"""Check a job's config here, before any gcloud command: `run` and `babysit`, dry or not.

The experiment file (with its variant) is loaded from this checkout with the job's
`--config.*` overrides, as `sparrow train` will load it on the workers, and validated
for training (`config.validate(..., training=True)`); an rl run must also name its
sources. A bad key or value is a LaunchError naming it (exit 2, nothing printed or run).

This needs the repo's config module and ml_collections (pure Python, no JAX) on this
machine: `pip install ml_collections`.
"""
from __future__ import annotations

import os

from sparrow_jax.launch.gcloud import LaunchError
from sparrow_jax.launch.remote import TrainJob

# Where an rl run starts from: the sft policy and both reward models (rl/trainer.py).
RL_SOURCES = {"train.init_from": "the sft workdir, the starting policy",
              "rl.pref_rm_from": "the pref_rm workdir", "rl.rule_rm_from": "the rule_rm workdir"}


def resolve_config(spec: str, repo_root: str) -> str:
    """`path[:variant]` with the path taken relative to `repo_root` (the workers run it from their
    copy of the checkout). Raises LaunchError if the file is not there."""
    path, sep, variant = spec.partition(":")
    local = os.path.join(repo_root, path)
    if not os.path.isfile(local):
        raise LaunchError(f"--config {spec!r}: {local} does not exist (the path is relative to the "
                          f"checkout the workers run, {repo_root})")
    return local + sep + variant


def check_train_config(job: TrainJob, repo_root: str):
    """The job's validated config (an ml_collections.ConfigDict). Raises LaunchError."""
    spec = resolve_config(job.config, repo_root)
    try:
        from sparrow_jax.config import ConfigError, apply_overrides, load_experiment, validate
    except ImportError as err:
        raise LaunchError(f"checking --config needs ml_collections on this machine ({err}): "
                          f"pip install ml_collections") from None
    # The workers pass the synced data dir as data.dir; any string validates the same.
    overrides = [*job.overrides] + ([f"--config.data.dir={job.data}"] if job.data else [])
    try:
        cfg = apply_overrides(load_experiment(spec), overrides)
    except ConfigError as err:
        raise LaunchError(f"--config {job.config}: {err}") from None
    except ImportError as err:  # the experiment file imports what this machine lacks
        raise LaunchError(f"--config {job.config}: cannot load it here: {err}") from None
    try:
        validate(cfg, source=f"--config {job.config}", training=True)
    except ConfigError as err:
        raise LaunchError(str(err)) from None
    if cfg.train.stage == "rl":
        unset = [key for key in RL_SOURCES if not cfg[key.split(".")[0]][key.split(".")[1]]]
        if unset:
            raise LaunchError(
                f"--config {job.config}: train.stage='rl' needs "
                + "; ".join(f"config key '{key}' ({RL_SOURCES[key]})" for key in unset)
                + ": pass " + " ".join(f"--config.{key}=gs://..." for key in unset))
    return cfg
