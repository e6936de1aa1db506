"""Start a stage from an earlier stage's checkpoint (the hydra's shared trunk).

The recipe's order is lm -> sft -> {pref_rm, rule_rm} -> rl. A later stage takes
the trunk (frozen from then on) and every role the source has; a role the source
lacks starts from the source's policy top (the pre-trained layers, as Sparrow's
reward models start from the LM), keeping its own freshly initialised head.
The teacher is a copy of the source's policy (the KL anchor at RL start).
"""
from __future__ import annotations

import json
import logging
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparrow_jax import sharding as shd
from sparrow_jax.model import hydra
from sparrow_jax.train import storage
from sparrow_jax.train.checkpoints import Checkpointer, CheckpointError
from sparrow_jax.train.optimizer import make_optimizer
from sparrow_jax.train.state import sharded_state_factory
from sparrow_jax.train.trainable import STAGE_ROLES, merge_params, split_params

log = logging.getLogger(__name__)

# Params of a top other than its head: what a new role copies from the policy (and its
# LM head, 'unembed', when the new role has one: the preference RM with pref_rm_likelihood).
TOP_BODY = ("layers", "final_norm", "unembed")


def checkpoint_dir(workdir: str) -> str:
    return storage.join(workdir, "checkpoints")


def load_params(source_workdir: str, cfg, mesh) -> tuple[dict, dict]:
    """(full hydra params, source config dict) from the latest checkpoint of a workdir.

    Raises CheckpointError naming the directory if there is no checkpoint, or
    saying what differs if the source model's shape is not this config's.
    """
    ckpt = Checkpointer(checkpoint_dir(source_workdir))
    steps = ckpt.steps()
    if not steps:
        raise CheckpointError(
            f"train.init_from={source_workdir!r} has no checkpoint under "
            f"{checkpoint_dir(source_workdir)}: train that stage first")
    source_cfg_dict = ckpt.read_meta(steps[-1]).get("config")
    if not source_cfg_dict:
        raise CheckpointError(f"{checkpoint_dir(source_workdir)}/{steps[-1]} stores no config")
    source_cfg = ml_collections.ConfigDict(source_cfg_dict)
    source_stage = source_cfg.train.stage
    roles = STAGE_ROLES[source_stage]
    rules = shd.rules_from_config(cfg.mesh)
    optimizer, _ = make_optimizer(source_cfg.train, source_cfg.train.steps)
    _, abstract, _ = sharded_state_factory(
        partial(hydra.init_params, cfg.model, roles=roles),
        hydra.param_logical_axes(cfg.model, roles=roles), source_stage, optimizer, mesh, rules)
    restored = ckpt.restore_latest(abstract, config_json=json.dumps(cfg.to_dict()))
    ckpt.close()
    return merge_params(restored.state.params, restored.state.frozen), source_cfg_dict


def trees_equal(a, b) -> bool:
    """Same structure, shapes and values (e.g. two workdirs' shared trunks)."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    return tree_a == tree_b and all(
        np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(leaves_a, leaves_b))


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


def initial_state(cfg, setup, mesh):
    """A fresh sharded TrainState for `setup`'s stage, grafted from `train.init_from` if set."""
    state = setup.init_fn(jax.random.PRNGKey(cfg.train.seed))
    if not cfg.train.init_from:
        return state
    source_params, source_cfg = load_params(cfg.train.init_from, cfg, mesh)
    log.info("initialising %s from %s (stage %s)", cfg.train.stage, cfg.train.init_from,
             source_cfg["train"]["stage"])
    grafted = graft(merge_params(state.params, state.frozen), source_params)
    trainable, frozen = split_params(grafted, cfg.train.stage)
    return state.replace(params=trainable, frozen=frozen)
