"""Loading a policy and its reward models from workdirs; bad workdirs exit 2 with what to run."""
import os
import shutil

import jax
import numpy as np
import pytest

from eval_helpers import STAGE_ROLES, init_params, make_config, save_workdir
from sparrow_jax.cli import main
from sparrow_jax.evaluation.agent import load_agent
from sparrow_jax.evaluation.checkpoint_params import FrozenSourceError, WorkdirError, read_params
from sparrow_jax.rl import checkpoint as rl_checkpoint
from sparrow_jax.train.checkpoints import Checkpointer
from sparrow_jax.train.init_from import Source
from sparrow_jax.train.optimizer import make_optimizer
from sparrow_jax.train.state import init_state
from sparrow_jax.train.fingerprint import fingerprint


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


def _save_rl_by_reference(workdir, sources, world, tok, step=3):
    """An rl workdir as `sparrow train ...:rl` writes it: policy + value + optimizer state; trunk and
    teacher named from sources['sft'], the reward models from sources['pref_rm'] / ['rule_rm']."""
    read = {stage: read_params(path) for stage, path in sources.items()}
    value = init_params(make_config(world, tok), ("value",), seed=3)["value"]
    policy = jax.tree.map(lambda x: x + 1, read["sft"].params["policy"])  # "trained"
    params = {"trunk": read["sft"].params["trunk"], "policy": policy, "value": value,
              "teacher": read["sft"].params["policy"], "pref_rm": read["pref_rm"].params["pref_rm"],
              "rule_rm": read["rule_rm"].params["rule_rm"]}
    cfg = make_config(world, tok, "rl")
    state = init_state(params, "rl", make_optimizer(cfg.train, cfg.train.steps)[0], jax.random.PRNGKey(0))
    as_source = {stage: Source(path, r.step, r.params, r.config) for (stage, path), r in
                 zip(sources.items(), read.values())}
    refs = rl_checkpoint.frozen_references(state.frozen, as_source["sft"],
                                           {role: as_source[role] for role in ("pref_rm", "rule_rm")})
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    rl_checkpoint.save(ckpt, step, state, refs, meta={"config": cfg.to_dict()},
                       assets={"tokenizer.model": tok.serialized_model})
    ckpt.close()
    return params


def test_rl_workdir_reads_the_frozen_parts_it_names(root, world, tok, tmp_path):
    sources = {stage: os.path.join(root, stage) for stage in ("sft", "pref_rm", "rule_rm")}
    params = _save_rl_by_reference(str(tmp_path / "rl"), sources, world, tok)
    agent = load_agent(str(tmp_path / "rl"))
    assert agent.stage == "rl" and agent.step == 3
    assert agent.pref_rm_source == f"{sources['pref_rm']}@1 (rl.pref_rm_from of {tmp_path / 'rl'}@3)"
    assert agent.rule_rm_source == f"{sources['rule_rm']}@1 (rl.rule_rm_from of {tmp_path / 'rl'}@3)"
    assert set(agent.params) == {"trunk", "policy", "pref_rm", "rule_rm"}
    for part in agent.params:
        assert fingerprint(agent.params[part]) == fingerprint(params[part]), part
    explicit = load_agent(str(tmp_path / "rl"), pref_rm=sources["pref_rm"])
    assert explicit.pref_rm_source == f"{sources['pref_rm']}@1"


def test_rl_workdir_with_a_missing_or_changed_source_is_refused_naming_it(root, world, tok, tmp_path,
                                                                         capsys):
    sources = {stage: os.path.join(root, stage) for stage in ("sft", "pref_rm", "rule_rm")}
    sources["rule_rm"] = str(tmp_path / "rule_rm")
    save_workdir(sources["rule_rm"], make_config(world, tok, "rule_rm"), tok,
                 read_params(os.path.join(root, "rule_rm")).params)
    _save_rl_by_reference(str(tmp_path / "rl"), sources, world, tok)
    assert load_agent(str(tmp_path / "rl")).has_rule_rm

    other = init_params(make_config(world, tok), ("rule_rm",), seed=5)
    checkpoints = os.path.join(sources["rule_rm"], "checkpoints")
    shutil.rmtree(os.path.join(checkpoints, "1"))  # retrained in place: another rule_rm at step 1
    save_workdir(sources["rule_rm"], make_config(world, tok, "rule_rm"), tok,
                 {**read_params(os.path.join(root, "rule_rm")).params, "rule_rm": other["rule_rm"]})
    with pytest.raises(FrozenSourceError, match="'rule_rm' there has changed since") as err:
        load_agent(str(tmp_path / "rl"))
    assert f"rl.rule_rm_from={sources['rule_rm']} at step 1" in str(err.value)

    os.rename(os.path.join(checkpoints, "1"), os.path.join(checkpoints, "2"))  # and then moved on
    assert _exit_code(["eval", "--workdir", str(tmp_path / "rl")]) == 2
    out = capsys.readouterr().err
    assert f"rl.rule_rm_from={sources['rule_rm']} at step 1" in out and "checkpoints at steps [2] only" in out
    assert "put that workdir back" in out and "Traceback" not in out


def test_rl_workdir_prefers_its_own_reward_models(root):
    # An rl checkpoint written before the frozen parts were kept by reference holds them itself.
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
    assert fingerprint(agent.params["policy"]) == fingerprint(params["policy"])
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
