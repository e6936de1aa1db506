"""RL checkpoints hold what RL trains; the frozen parts come back from their sources, checked.

One tiny rl run (2 steps) from copies of its sources (sft, pref_rm, rule_rm at 2 steps each, the
`rl_inputs` fixture's), so a test can change or remove a source and put it back.
"""
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from loop_helpers import rl_sources, tiny_config
from sparrow_jax import sharding as shd
from sparrow_jax.evaluation.agent import load_agent
from sparrow_jax.evaluation.checkpoint_params import FrozenSourceError
from sparrow_jax.rl import trainer
from sparrow_jax.train import init_from
from sparrow_jax.train.checkpoints import Checkpointer, CheckpointError
from sparrow_jax.train.fingerprint import fingerprint

pytestmark = pytest.mark.long_running(80)

RL_KNOBS = {"rl.max_prompt_len": 96, "rl.max_new_tokens": 12, "rl.normaliser_batches": 1,
            "train.checkpoint_every": 2}


@pytest.fixture(scope="module")
def run(rl_inputs, tmp_path_factory):
    """{'world', 'sft', 'pref_rm', 'rule_rm', 'rl', 'cfg'}: an rl workdir at step 2 and copies of its
    sources (the tests change them)."""
    root = tmp_path_factory.mktemp("rl_checkpoint")
    out = {"world": rl_inputs["world"]}
    for stage in ("sft", "pref_rm", "rule_rm"):
        out[stage] = str(root / stage)
        shutil.copytree(rl_inputs[stage], out[stage])
    out["cfg"] = _rl_config(out, steps=2)
    out["rl"] = str(root / "rl")
    assert trainer.train_rl(out["cfg"], out["rl"])["finished"]
    return out


def _rl_config(run, steps):
    return tiny_config("rl", run["world"], steps=steps, **rl_sources(run), **RL_KNOBS)


def test_rl_checkpoint_stores_only_what_rl_trains(run):
    # Its size against params + optimizer state: tests/checkpoints/test_rl_checkpoint_size.py.
    stored = ocp.StandardCheckpointer().restore(os.path.join(run["rl"], "checkpoints", "2", "state"))
    assert set(stored) == {"step", "params", "opt_state", "rng"}
    assert set(stored["params"]) == {"policy", "value"}
    assert int(stored["step"]) == 2


def test_meta_names_each_frozen_source_and_the_whole_agent_reads_back(run):
    meta = Checkpointer(os.path.join(run["rl"], "checkpoints"), create=False).read_meta(2)
    sources = meta["frozen_sources"]
    assert {p: (s["workdir"], s["step"], s["role"], s["via"]) for p, s in sources.items()} == {
        "trunk": (run["sft"], 2, "trunk", "train.init_from"),
        "teacher": (run["sft"], 2, "policy", "train.init_from"),
        "pref_rm": (run["pref_rm"], 2, "pref_rm", "rl.pref_rm_from"),
        "rule_rm": (run["rule_rm"], 2, "rule_rm", "rl.rule_rm_from")}
    mesh = shd.make_mesh(run["cfg"].mesh)
    whole, _ = init_from.load_params(run["rl"], run["cfg"], mesh)
    sft, _ = init_from.load_params(run["sft"], run["cfg"], mesh)
    assert fingerprint(whole["trunk"]) == fingerprint(sft["trunk"]) == sources["trunk"]["fingerprint"]
    assert fingerprint(whole["teacher"]) == fingerprint(sft["policy"])
    assert fingerprint(whole["policy"]) != fingerprint(sft["policy"])  # trained 2 steps
    for role in ("pref_rm", "rule_rm"):
        rm, _ = init_from.load_params(run[role], run["cfg"], mesh)
        assert fingerprint(whole[role]) == fingerprint(rm[role]) == sources[role]["fingerprint"]


def test_eval_reads_an_rl_workdir_alone_and_says_where_the_reward_models_came_from(run):
    agent = load_agent(run["rl"])
    assert agent.pref_rm_source == f"{run['pref_rm']}@2 (rl.pref_rm_from of {run['rl']}@2)"
    assert agent.rule_rm_source == f"{run['rule_rm']}@2 (rl.rule_rm_from of {run['rl']}@2)"
    assert set(agent.params) == {"trunk", "policy", "pref_rm", "rule_rm"}
    assert agent.pref_seq_len == 160  # the reward model run's own width
    sft = load_agent(run["sft"], pref_rm=run["pref_rm"], rule_rm=run["rule_rm"])
    for part in ("trunk", "pref_rm", "rule_rm"):
        assert fingerprint(agent.params[part]) == fingerprint(sft.params[part]), part


def _perturb(workdir, step, role):
    """Rewrite `workdir`'s checkpoint at `step` with one element of `role` changed."""
    directory = os.path.join(workdir, "checkpoints")
    meta = Checkpointer(directory, create=False).read_meta(step)
    state = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "state"))
    leaf = np.array(state["params"][role]["head"])
    leaf.flat[0] = np.nextafter(leaf.flat[0], np.float32(np.inf))
    state["params"][role]["head"] = leaf
    shutil.rmtree(os.path.join(directory, str(step)))
    ckpt = Checkpointer(directory, async_save=False)
    ckpt.save(step, state, meta=meta, force=True)
    ckpt.close()


def test_a_changed_or_missing_source_is_an_error_naming_it(run, tmp_path):
    backup = str(tmp_path / "backup")
    resumed = _rl_config(run, steps=4)
    for part, workdir, change in (("pref_rm", run["pref_rm"], "changed"),
                                  ("trunk", run["sft"], "removed")):
        shutil.copytree(workdir, backup)
        try:
            if change == "changed":
                _perturb(workdir, 2, "pref_rm")
                expected = (f"takes its frozen pref_rm from rl.pref_rm_from={workdir} at step 2, "
                            f"but its 'pref_rm' there has changed since")
            else:
                shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))
                expected = f"takes its frozen trunk from train.init_from={workdir} at step 2, but"
            rl_copy = str(tmp_path / f"rl_{part}")
            shutil.copytree(run["rl"], rl_copy)
            with pytest.raises(CheckpointError, match="put that workdir back") as err:
                trainer.train_rl(resumed, rl_copy)
            assert expected in str(err.value)
            with pytest.raises(FrozenSourceError) as err:
                load_agent(run["rl"])
            assert expected in str(err.value) and "Traceback" not in str(err.value)
        finally:
            shutil.rmtree(workdir)
            shutil.move(backup, workdir)
    assert load_agent(run["rl"]).pref_rm_source.startswith(run["pref_rm"])  # back as it was
