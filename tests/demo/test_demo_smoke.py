"""Smoke run of the whole recipe (`sparrow demo`) with reduced steps, so CI proves it still runs.

The figures of a real run are in BUILD_NOTES.md; here the stages train 2 steps each on a small
world and 6 held-out prompts are evaluated: the plumbing, the report and the rerun behaviour
are what is checked.
"""
import importlib.util
import json
import math
import os

import pytest

from sparrow_jax.cli import main
from sparrow_jax.evaluation.schema import DEMO_REPORT_SCHEMA, validate

pytestmark = pytest.mark.long_running(155)

SMALL_WORLD = ["n_entities=24", "n_heldout=6", "n_dialogues=120", "n_preferences=60",
               "n_rule_ratings=80", "n_prompts=40"]
# rl at one batch width and one prompt width: each more is another ~10 s of compiles for 2
# steps (the RL loop smoke test and the two-process recipe run two of each).
FAST = ["--config.train.steps=2", "--config.rl.normaliser_batches=1",
        "--config.train.eval_batches=2", "--config.rl.max_new_tokens=12",
        "--config.model.d_model=32", "--config.model.head_dim=16", "--config.model.n_heads=2",
        "--config.model.d_ff=64", "--config.model.value_hidden=16",
        "--config.rl.length_buckets=()", "--config.rl.prompt_buckets=()"]


def _demo(root, capsys):
    args = ["demo", "--workdir", root, "--max-prompts", "6", "--n-best", "2"]
    for setting in SMALL_WORLD:
        args += ["--world-set", setting]
    try:
        main(args + FAST)
    except SystemExit as stop:
        assert stop.code in (0, None), capsys.readouterr()
    return capsys.readouterr().out


def test_demo_runs_every_stage_writes_the_report_and_skips_finished_stages(tmp_path, capsys):
    root = str(tmp_path / "demo")
    out = _demo(root, capsys)
    for stage in ("lm", "sft", "pref_rm", "rule_rm", "rl"):
        assert f"== {stage} done" in out
    # rule_rm trained in a second process beside pref_rm, its output in its own log
    assert "a second process beside pref_rm" in out
    with open(os.path.join(root, "rule_rm", "train.log")) as f:
        assert "rule_rm finished at step 2" in f.read()
        with open(os.path.join(root, stage, "summary.json")) as f:
            assert json.load(f)["finished"]
    with open(os.path.join(root, "report.json")) as f:
        report = json.load(f)
    validate(report, DEMO_REPORT_SCHEMA)
    assert set(report["models"]) == {"sft", "sft@2", "rl", "rl@2"} and report["judge"] == "oracle"
    assert report["models"]["sft"]["pref_win_rate_vs_sft"] == 0.5
    assert "rule violation" in out and "report.md" in out
    assert os.path.exists(os.path.join(root, "training_curves.png"))
    _check_projection_gap(os.path.join(root, "rl"))

    summary_times = {s: os.path.getmtime(os.path.join(root, s, "summary.json"))
                     for s in ("lm", "rl")}
    rerun = _demo(root, capsys)
    assert "== lm" not in rerun and "== rl" not in rerun  # finished stages are skipped
    assert {s: os.path.getmtime(os.path.join(root, s, "summary.json")) for s in summary_times} \
        == summary_times


def _check_projection_gap(rl_workdir):
    """benchmarks/projection_gap.py on the smoke run's rl checkpoint: both reward models
    scored, every figure finite, bf16 inputs near but not equal to float32."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "projection_gap.py")
    spec = importlib.util.spec_from_file_location("projection_gap", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.measure(rl_workdir, batches=1)
    assert report["tokens"] > 0 and report["dialogues"] > 0
    assert all(math.isfinite(v) for v in report.values() if isinstance(v, float)), report
    assert 0 < report["policy_kl_mean"] < 0.01 and 0 < report["policy_abs_logp_diff_mean"] < 0.1
    assert 0.9 <= report["policy_argmax_agreement"] <= 1
    assert 0 <= report["p_broken_abs_diff_mean"] < 0.05 and report["elo_abs_diff_over_std"] < 0.2


def test_a_failed_second_process_is_an_error_that_names_its_log(tmp_path):
    from sparrow_jax import demo
    from sparrow_jax.train.run_control import TrainingError
    settings = demo.DemoSettings(overrides=("--config.train.no_such_key=1",))
    child = demo._ChildStage(str(tmp_path), "rule_rm", settings, steps=2)
    with pytest.raises(TrainingError, match=r"rule_rm \(a second process\) stopped with exit code 2"
                                            r".*rule_rm/train.log"):
        child.wait()
    with open(tmp_path / "rule_rm" / "train.log") as f:
        assert "train.no_such_key" in f.read()  # the child's own error is kept in its log
