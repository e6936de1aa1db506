"""Start a stage from an earlier stage's checkpoint (the hydra's shared trunk).

The recipe's order is lm -> sft -> {pref_rm, rule_rm} -> rl. A later stage takes
the trunk (frozen from then on) and every role the source has; a role the source
lacks starts from the source's policy top (the pre-trained layers, as Sparrow's
reward models start from the LM), keeping its own freshly initialised head.
The teacher is a copy of the source's policy (the KL anchor at RL start).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections

from sparrow_jax import sharding as shd
from sparrow_jax.model import hydra
from sparrow_jax.train import frozen_sources
from sparrow_jax.train.checkpoints import Checkpointer, CheckpointError, checkpoint_dir
from sparrow_jax.train.optimizer import make_optimizer
from sparrow_jax.train.state import sharded_state_factory, without_frozen
from sparrow_jax.train.trainable import STAGE_ROLES, merge_params, split_params

log = logging.getLogger(__name__)

__all__ = ["Source", "checkpoint_dir", "graft", "grafted_state", "initial_state", "load_params",
           "load_source"]

# Params of a top other than its head: what a new role copies from the policy (and its
# LM head, 'unembed', when the new role has one: the preference RM with pref_rm_likelihood).
TOP_BODY = ("layers", "final_norm", "unembed")


@dataclasses.dataclass(frozen=True)
class Source:
    """A workdir's checkpoint read as full hydra params {trunk, <roles>} (sharded like this run's)."""
    workdir: str
    step: int
    params: dict
    config: dict   # the config dict the source run was made with


def load_source(source_workdir: str, cfg, mesh, step: int | None = None,
                via: str = "train.init_from") -> Source:
    """The hydra params of a workdir's checkpoint at `step` (default: the newest usable one).

    An rl checkpoint's frozen parts are re-read from the sources its meta names (and their
    fingerprints checked). Raises CheckpointError naming the directory if there is no
    checkpoint, or saying what differs if the source model's shape is not this config's;
    `via` (the config key naming the workdir) goes in the messages.
    """
    ckpt = Checkpointer(checkpoint_dir(source_workdir), create=False)
    try:
        steps = ckpt.steps()
        if not steps:
            raise CheckpointError(
                f"{via}={source_workdir!r} has no checkpoint under "
                f"{checkpoint_dir(source_workdir)}: train that stage first")
        probe = steps[-1] if step is None else step
        meta = ckpt.read_meta(probe)
        source_cfg_dict = meta.get("config")
        if not source_cfg_dict:
            raise CheckpointError(f"{checkpoint_dir(source_workdir)}/{probe} stores no config")
        source_cfg = ml_collections.ConfigDict(source_cfg_dict)
        source_stage = source_cfg.train.stage
        roles = STAGE_ROLES[source_stage]
        rules = shd.rules_from_config(cfg.mesh)
        optimizer, _ = make_optimizer(source_cfg.train, source_cfg.train.steps)
        _, abstract, _ = sharded_state_factory(
            partial(hydra.init_params, cfg.model, roles=roles),
            hydra.param_logical_axes(cfg.model, roles=roles), source_stage, optimizer, mesh, rules)
        by_reference = bool(frozen_sources.from_meta(meta))
        target = without_frozen(abstract) if by_reference else abstract
        config_json = json.dumps(cfg.to_dict())
        restored = (ckpt.restore_latest(target, config_json=config_json) if step is None
                    else ckpt.restore(step, target, config_json=config_json))
    finally:
        ckpt.close()
    if by_reference:
        frozen = frozen_sources.read_parts(
            frozen_sources.from_meta(restored.meta),
            user=f"{checkpoint_dir(source_workdir)}/{restored.step}", targets=abstract.frozen)
        return Source(source_workdir, restored.step, merge_params(restored.state["params"], frozen),
                      source_cfg_dict)
    return Source(source_workdir, restored.step,
                  merge_params(restored.state.params, restored.state.frozen), source_cfg_dict)


def load_params(source_workdir: str, cfg, mesh) -> tuple[dict, dict]:
    """(full hydra params, source config dict) from the latest checkpoint of a workdir (`load_source`)."""
    source = load_source(source_workdir, cfg, mesh)
    return source.params, source.config


def graft(target: dict, source: dict) -> dict:
    """Target params with the trunk and matching roles taken from `source`.

    Both are full hydra param dicts of the same model shape.
    """
    out = dict(target)
    out["trunk"] = source["trunk"]
    for role in target:
        if role == "trunk":
            continue
        if role in source:
            out[role] = source[role]
        elif role == "teacher" and "policy" in source:
            # A copy: the policy's buffers are donated to the update step.
            out[role] = jax.tree.map(jnp.copy, source["policy"])
        elif "policy" in source and "layers" in target[role]:
            out[role] = {**target[role], **{k: source["policy"][k] for k in TOP_BODY
                                            if k in source["policy"] and k in target[role]}}
    return jax.tree.map(lambda t, s: s.astype(t.dtype), target, out)


def grafted_state(cfg, setup, source: Source):
    """A fresh sharded TrainState for `setup`'s stage with `graft`'s parts taken from `source`."""
    state = setup.init_fn(jax.random.PRNGKey(cfg.train.seed))
    log.info("initialising %s from %s@%d (stage %s)", cfg.train.stage, source.workdir, source.step,
             source.config["train"]["stage"])
    grafted = graft(merge_params(state.params, state.frozen), source.params)
    trainable, frozen = split_params(grafted, cfg.train.stage)
    return state.replace(params=trainable, frozen=frozen)


def initial_state(cfg, setup, mesh):
    """A fresh sharded TrainState for `setup`'s stage, grafted from `train.init_from` if set."""
    if not cfg.train.init_from:
        return setup.init_fn(jax.random.PRNGKey(cfg.train.seed))
    return grafted_state(cfg, setup, load_source(cfg.train.init_from, cfg, mesh))
