"""Smoke run of the supervised recipe with reduced steps: lm -> sft -> pref_rm, rule_rm.

Checks the plumbing a user relies on (each stage starts from the previous one's
checkpoint, shares its frozen trunk, and reports its held-out figures), not the
figures themselves: those are measured with the real step counts (BUILD_NOTES.md).
"""
import jax
import numpy as np
import pytest

from loop_helpers import make_world, tiny_config
from sparrow_jax import sharding as shd
from sparrow_jax.train import loop, stages
from sparrow_jax.train.checkpoints import Checkpointer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(str(tmp_path_factory.mktemp("world") / "toy"))


def _params(cfg, workdir):
    setup = stages.build_stage(cfg, shd.make_mesh(cfg.mesh), log_unsharded=False)
    state = Checkpointer(f"{workdir}/checkpoints").restore_latest(setup.abstract_state).state
    return state.params, state.frozen


def test_supervised_stages_chain(world, tmp_path):
    dirs = {stage: str(tmp_path / stage) for stage in ("lm", "sft", "pref_rm", "rule_rm")}
    sources = {"sft": "lm", "pref_rm": "sft", "rule_rm": "sft"}
    configs = {}
    for stage, workdir in dirs.items():
        extra = {"train.init_from": dirs[sources[stage]]} if stage in sources else {}
        configs[stage] = tiny_config(stage, world, steps=3, **extra)
        summary = loop.train_stage(configs[stage], workdir)
        assert summary["finished"] and summary["step"] == 3
        figure = {"lm": "agent_nll", "sft": "agent_nll", "pref_rm": "accuracy",
                  "rule_rm": "macro_auc"}[stage]
        assert np.isfinite(summary["eval"][figure]), summary

    lm_trainable, _ = _params(configs["lm"], dirs["lm"])
    sft_trainable, sft_frozen = _params(configs["sft"], dirs["sft"])
    rm_trainable, rm_frozen = _params(configs["rule_rm"], dirs["rule_rm"])
    # The trunk trained by lm is shared, frozen, by every later stage.
    for later in (sft_frozen, rm_frozen):
        for a, b in zip(jax.tree.leaves(lm_trainable["trunk"]), jax.tree.leaves(later["trunk"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The rule RM's top started from the SFT policy's top and then trained.
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(sft_trainable["policy"]["layers"]),
                 jax.tree.leaves(rm_trainable["rule_rm"]["layers"]))]
    assert any(moved)
