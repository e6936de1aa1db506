"""Fixtures shared by the training-loop modules."""
import pytest

from loop_helpers import make_world, tiny_config
from sparrow_jax.train import loop


@pytest.fixture(scope="session")
def rl_inputs(tmp_path_factory):
    """{'world', 'sft', 'pref_rm', 'rule_rm'}: workdirs of 2 steps each, ready for an rl run; built
    once per test process (the RL loop and RL checkpoint modules both start from them). Read only:
    a test that changes a workdir copies it first."""
    root = tmp_path_factory.mktemp("rl_inputs")
    out = {"world": make_world(str(root / "toy"))}
    for stage, source in (("sft", None), ("pref_rm", "sft"), ("rule_rm", "sft")):
        extra = {"train.init_from": out[source]} if source else {}
        out[stage] = str(root / stage)
        loop.train_stage(tiny_config(stage, out["world"], steps=2, **extra), out[stage])
    return out
