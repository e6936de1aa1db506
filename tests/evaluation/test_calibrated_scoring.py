"""The reward models' fitted temperatures reach inference: the one scorer (`evaluation/scoring.py`)
gives sigmoid(logit / T) and elo / T, and chat / reranking read T from the RM checkpoint's run."""
import io
import json
import os
import shutil

import jax
import numpy as np
import pytest

from sparrow_jax.cli import main
from sparrow_jax.dialogue.turns import Role, Turn
from sparrow_jax.evaluation.agent import load_agent
from sparrow_jax.evaluation.evaluator import make_environment
from sparrow_jax.evaluation.respond import respond
from sparrow_jax.evaluation.reranking import rank_candidates, RerankConfig
from sparrow_jax.evaluation.scoring import Scorer
from sparrow_jax.train import calibration

from eval_helpers import FixedEngine

DIALOGUES = [(Turn(Role.USER, "Where is Zorbel?"), Turn(Role.AGENT, "In Ulvania.")),
             (Turn(Role.USER, "Hello!"), Turn(Role.AGENT, "You idiot."))]
PREF_T, RULE_T = 0.25, 0.5


def _logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_a_scorer_with_temperature_t_gives_sigmoid_of_logit_over_t(root):
    agent = load_agent(os.path.join(root, "sft"))
    raw = Scorer(agent, pref_temperature=1.0, rule_temperature=1.0)
    scaled = Scorer(agent, pref_temperature=PREF_T, rule_temperature=RULE_T)
    p, q = raw.rule_probs(DIALOGUES), scaled.rule_probs(DIALOGUES)
    np.testing.assert_allclose(q, _sigmoid(_logit(p) / RULE_T), rtol=1e-5, atol=1e-6)
    assert not np.allclose(p, q)
    np.testing.assert_allclose(scaled.pref_elo(DIALOGUES), raw.pref_elo(DIALOGUES) / PREF_T, rtol=1e-6)
    with pytest.raises(ValueError, match="must be > 0"):
        Scorer(agent, rule_temperature=0.0)


def test_calibrated_helpers():
    p = np.array([1e-3, 0.3, 0.5, 0.9], np.float32)
    np.testing.assert_array_equal(calibration.calibrated_probs(p, 1.0), p)
    np.testing.assert_allclose(calibration.calibrated_probs(p, 2.0), _sigmoid(_logit(p) / 2), rtol=1e-5)
    np.testing.assert_allclose(calibration.calibrated_elo(np.array([1.0, -3.0]), 0.5), [2.0, -6.0])


def _write_summary(workdir, step, temperature):
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump({"stage": "x", "step": step, "finished": True,
                   "eval": {"temperature": temperature, "ece_before": 0.2, "ece_after": 0.05}}, f)


def test_read_temperature_of_a_checkpoint_step(tmp_path):
    workdir = str(tmp_path)
    value, why = calibration.read_temperature(workdir, 5)
    assert value is None and "no temperature fitted for step 5" in why
    _write_summary(workdir, 10, 0.3)
    assert calibration.read_temperature(workdir, 10) == (0.3, os.path.join(workdir, "summary.json"))
    assert calibration.read_temperature(workdir, 5)[0] is None  # summary.json is of another step
    os.makedirs(tmp_path / "logs")
    (tmp_path / "logs" / "metrics.jsonl").write_text(
        json.dumps({"step": 5, "split": "train", "temperature": 9.0}) + "\n"
        + json.dumps({"step": 5, "split": "eval", "temperature": 0.7}) + "\n" + '{"step": 5, "spl')
    value, where = calibration.read_temperature(workdir, 5)
    assert value == 0.7 and where.endswith("metrics.jsonl (eval at step 5)")


@pytest.fixture
def calibrated_root(root, tmp_path):
    """A copy of the fixture's sft / pref_rm / rule_rm workdirs whose RMs have fitted temperatures."""
    for stage in ("sft", "pref_rm", "rule_rm"):
        shutil.copytree(os.path.join(root, stage), tmp_path / stage)
    _write_summary(str(tmp_path / "pref_rm"), 1, PREF_T)
    _write_summary(str(tmp_path / "rule_rm"), 1, RULE_T)
    return tmp_path


def test_reranking_in_chat_uses_the_checkpoints_temperatures(calibrated_root):
    agent = load_agent(str(calibrated_root / "sft"))
    assert (agent.pref_rm_temperature, agent.rule_rm_temperature) == (PREF_T, RULE_T)
    scorer = Scorer(agent, batch_size=4, rule_batch_size=4)
    assert (scorer.pref_temperature, scorer.rule_temperature) == (PREF_T, RULE_T)
    assert any(f"temperature {RULE_T:.4g}" in note and "summary.json" in note for note in scorer.notes)
    env = make_environment(agent, engine=FixedEngine())
    history = DIALOGUES[0][:1]
    reply = respond(agent, env, history, jax.random.PRNGKey(0), scorer=scorer, n_best=4)
    raw = Scorer(agent, pref_temperature=1.0, rule_temperature=1.0)
    dialogues = [history + tuple(view.new_turns) for view in reply.candidates]
    elo, p = raw.pref_elo(dialogues), raw.rule_probs(dialogues)
    np.testing.assert_allclose([v.elo for v in reply.candidates], elo / PREF_T, rtol=1e-5)
    shown = np.array([[v.p_broken[r] for r in scorer.rule_ids] for v in reply.candidates])
    np.testing.assert_allclose(shown, _sigmoid(_logit(p) / RULE_T), rtol=1e-4, atol=1e-6)
    malformed = np.array([[v.malformed is not None for v in reply.candidates]])
    best, _ = rank_candidates((elo / PREF_T)[None], _sigmoid(_logit(p) / RULE_T)[None],
                              RerankConfig(4), malformed)
    assert reply.chosen == int(best[0])


def _chat(argv, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello!\n"))
    with pytest.raises(SystemExit) as stop:
        main(["chat", *argv])
    captured = capsys.readouterr()
    assert stop.value.code == 0, captured.err
    return captured


def test_sparrow_chat_reads_the_temperatures_or_says_once_it_has_none(calibrated_root, monkeypatch,
                                                                     capsys):
    argv = ["--workdir", str(calibrated_root / "sft"), "--n-best", "2", "--verbose"]
    err = _chat(argv, monkeypatch, capsys).err
    assert f"pref_rm {calibrated_root / 'pref_rm'}@1: calibrated with temperature {PREF_T:.4g}" in err
    assert f"rule_rm {calibrated_root / 'rule_rm'}@1: calibrated with temperature {RULE_T:.4g}" in err
    assert "uncalibrated" not in err
    os.remove(calibrated_root / "rule_rm" / "summary.json")  # a run without a fitted temperature
    argv = argv[:-1]  # not verbose: only the missing temperature is said, once for two turns
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello!\nAnd you?\n"))
    with pytest.raises(SystemExit):
        main(["chat", *argv])
    err = capsys.readouterr().err
    assert err.count("uncalibrated (temperature 1.0)") == 1 and "rule_rm" in err and "pref_rm" not in err
