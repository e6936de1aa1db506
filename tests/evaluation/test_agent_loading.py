"""Loading a policy and its reward models from workdirs; bad workdirs exit 2 with what to run."""
import os

import jax
import numpy as np
import pytest

from eval_helpers import STAGE_ROLES, init_params, make_config, save_workdir
from sparrow_jax.cli import main
from sparrow_jax.evaluation.agent import load_agent
from sparrow_jax.evaluation.checkpoint_params import WorkdirError
from sparrow_jax.train.init_from import trees_equal


def _exit_code(argv):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return stop.value.code


def test_sft_workdir_takes_sibling_reward_models(root):
    agent = load_agent(os.path.join(root, "sft"))
    assert agent.stage == "sft" and agent.step == 1
    assert set(agent.params) == {"trunk", "policy", "pref_rm", "rule_rm"}
    assert agent.pref_rm_source.startswith(os.path.join(root, "pref_rm"))
    assert agent.rule_rm_source.startswith(os.path.join(root, "rule_rm"))
    # The toy world rates only the rules its oracle can check: those are the ones scored.
    assert 0 < len(agent.rules) < 23
    assert load_agent(os.path.join(root, "sft"), rule_scope="all").rules[0].id == "no_stereotypes"


def test_rl_workdir_prefers_its_own_reward_models(root):
    agent = load_agent(os.path.join(root, "rl"))
    assert agent.stage == "rl"
    assert "(rl checkpoint)" in agent.pref_rm_source and "(rl checkpoint)" in agent.rule_rm_source
    assert "value" not in agent.params and "teacher" not in agent.params
    explicit = load_agent(os.path.join(root, "rl"), pref_rm=os.path.join(root, "pref_rm"))
    assert explicit.pref_rm_source.startswith(os.path.join(root, "pref_rm"))


def test_explicit_step_and_missing_step(root):
    assert load_agent(os.path.join(root, "sft"), step=1).step == 1
    with pytest.raises(WorkdirError, match="no checkpoint at step 7"):
        load_agent(os.path.join(root, "sft"), step=7)


def test_reward_model_with_another_trunk_is_refused(root, world, tok, tmp_path):
    other = init_params(make_config(world, tok), ("pref_rm",), seed=1)
    save_workdir(str(tmp_path / "pref_rm"), make_config(world, tok, "pref_rm"), tok, other)
    with pytest.raises(WorkdirError, match="another trunk"):
        load_agent(os.path.join(root, "sft"), pref_rm=str(tmp_path / "pref_rm"))


def test_no_sibling_means_no_reward_model(root, world, tok, tmp_path):
    params = init_params(make_config(world, tok), STAGE_ROLES["sft"])
    save_workdir(str(tmp_path / "alone"), make_config(world, tok), tok, params)
    agent = load_agent(str(tmp_path / "alone"))
    assert not agent.has_pref_rm and not agent.has_rule_rm
    assert trees_equal(agent.params["policy"], params["policy"])
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(agent.params["trunk"])[0]),
                                  np.asarray(jax.tree.leaves(params["trunk"])[0]))


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_eval_on_a_bad_workdir_exits_2_saying_what_to_run(tmp_path, capsys, make):
    workdir = tmp_path / "wd"
    if make == "empty":
        workdir.mkdir()
    assert _exit_code(["eval", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert str(workdir) in err and "sparrow train --config" in err and ":sft" in err
    assert "Traceback" not in err
    assert make == "empty" or not workdir.exists()  # nothing is created


def test_eval_on_another_model_shape_exits_2(root, capsys):
    code = _exit_code(["eval", "--workdir", os.path.join(root, "sft"), "--config",
                       os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "tiny_cpu.py:sft")])
    assert code == 2
    err = capsys.readouterr().err
    assert "another shape" in err and "stored" in err and "Traceback" not in err


def test_eval_on_a_reward_model_workdir_exits_2(root, capsys):
    assert _exit_code(["eval", "--workdir", os.path.join(root, "pref_rm")]) == 2
    assert "not a policy" in capsys.readouterr().err
