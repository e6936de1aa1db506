"""Reports built from real (tiny) evaluations match their documented schemas, types included."""
import json
import os
import subprocess
import sys

import pytest

from sparrow_jax.cli import main
from sparrow_jax.evaluation import schema
from sparrow_jax.evaluation.agent import load_agent
from sparrow_jax.evaluation.demo_report import demo_report, reward_model_figures, write_demo_report
from sparrow_jax.evaluation.evaluator import EvalSettings, evaluate_agent, load_prompts
from sparrow_jax.evaluation.judge import make_judge
from sparrow_jax.evaluation.plots import plot_training_curves
from sparrow_jax.evaluation.report import write_eval_report
from sparrow_jax.evaluation.scoring import Scorer

N_PROMPTS = 8  # the whole test split of the tiny world


@pytest.fixture(scope="module")
def evaluated(root):
    """{"sft", "sft@4", "rl"} evaluated on the first prompts, sft@4 and rl against sft."""
    sft_agent, rl_agent = load_agent(os.path.join(root, "sft")), load_agent(os.path.join(root, "rl"))
    prompts = load_prompts(sft_agent.data_dir, max_prompts=N_PROMPTS)
    scorer = Scorer(sft_agent)
    judge = make_judge(sft_agent.data_dir, scorer)
    kw = dict(show_progress=False)
    sft = evaluate_agent(sft_agent, prompts, judge, EvalSettings(batch_size=6), scorer=scorer, name="sft",
                         **kw)
    sft4 = evaluate_agent(sft_agent, prompts, judge, EvalSettings(n_best=4, batch_size=8), scorer=scorer,
                          baseline=sft, name="sft@4", **kw)
    rl = evaluate_agent(rl_agent, prompts, judge, EvalSettings(batch_size=6), name="rl", **kw)
    return {"sft": sft, "sft@4": sft4, "rl": rl}


def test_evaluation_is_complete_and_seeded(evaluated, root):
    sft, sft4 = evaluated["sft"], evaluated["sft@4"]
    assert len(sft.answers) == N_PROMPTS and sft.judge == "oracle"
    assert [a.prompt.id for a in sft.answers] == [a.prompt.id for a in sft4.answers]
    assert all(a.candidates == 4 and a.elo is not None for a in sft4.answers)
    assert 0.0 <= sft4.metrics["pref_win_rate"] <= 1.0 and sft.metrics["pref_win_rate"] is None
    again = evaluate_agent(sft.agent, [a.prompt for a in sft.answers], make_judge(sft.agent.data_dir),
                           EvalSettings(batch_size=6), show_progress=False)
    assert [a.dialogue for a in again.answers] == [a.dialogue for a in sft.answers]


def test_eval_report_matches_its_schema(evaluated, tmp_path):
    report = write_eval_report(evaluated["sft@4"], str(tmp_path), baseline=evaluated["sft"])
    with open(tmp_path / "report.json") as f:
        loaded = json.load(f)
    assert loaded == report
    schema.validate(loaded, schema.EVAL_REPORT_SCHEMA)
    assert loaded["model"]["n_best"] == 4 and loaded["baseline"]["name"] == "sft"
    assert loaded["data"]["prompts"] == N_PROMPTS
    for name, path in loaded["plots"].items():
        assert path is None or (tmp_path / path).stat().st_size > 0, name
    assert loaded["plots"]["training_curves"] is None and any("training_curves" in n for n in loaded["notes"])
    assert "| rule_violation_rate |" in (tmp_path / "report.md").read_text()
    lines = (tmp_path / "answers.jsonl").read_text().splitlines()
    assert len(lines) == N_PROMPTS and json.loads(lines[0])["dialogue"][0]["role"] == "user"


def test_schema_checker_catches_wrong_types_and_keys(evaluated, tmp_path):
    report = write_eval_report(evaluated["sft"], str(tmp_path))
    bad = json.loads(json.dumps(report))
    bad["metrics"]["rule_probes"] = 3.0       # an int field given a float
    bad["timings"]["wall_seconds"] = 1        # a float field given an int
    bad["model"].pop("step")
    bad["extra"] = True
    errors = schema.schema_errors(bad, schema.EVAL_REPORT_SCHEMA)
    assert len(errors) == 4, errors
    with pytest.raises(ValueError, match="rule_probes"):
        schema.validate(bad, schema.EVAL_REPORT_SCHEMA)
    bad = json.loads(json.dumps(report))
    bad["metrics"]["search_rate"] = 1.5
    with pytest.raises(ValueError, match="not in"):
        schema.validate(bad, schema.EVAL_REPORT_SCHEMA)


def test_demo_report_matches_its_schema(evaluated, root, tmp_path):
    with open(os.path.join(root, "pref_rm", "summary.json"), "w") as f:
        json.dump({"stage": "pref_rm", "eval": {"accuracy": 0.75, "eval_examples": 10.0}}, f)
    figures = reward_model_figures(os.path.join(root, "pref_rm"), os.path.join(root, "rule_rm"))
    assert figures == {"pref_rm_accuracy": 0.75, "rule_rm_auc": None}  # rule_rm has no summary.json
    report = demo_report(evaluated, wall_seconds=12.5, reward_models=figures)
    schema.validate(json.loads(json.dumps(report)), schema.DEMO_REPORT_SCHEMA)
    assert report["judge"] == "oracle" and list(report["models"]) == ["sft", "sft@4", "rl"]
    assert report["models"]["sft"]["pref_win_rate_vs_sft"] == 0.5
    assert report["models"]["sft@4"]["pref_win_rate_vs_sft"] == evaluated["sft@4"].metrics["pref_win_rate"]
    assert 0.0 <= report["models"]["rl"]["pref_win_rate_vs_sft"] <= 1.0  # computed with rl's own RM
    files = write_demo_report(report, str(tmp_path), results=evaluated, rl_workdir=os.path.join(root, "rl"))
    assert files["comparison"] == "comparison.png" and (tmp_path / "rule_violations.png").exists()
    assert files["training_curves"] is None
    assert json.loads((tmp_path / "report.json").read_text()) == report


def test_training_curves_from_metrics_jsonl(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    rows = [{"step": s, "split": "train", "reward": 0.1 * s, "kl": 0.01 * s} for s in range(1, 6)]
    rows.append({"step": 5, "split": "eval", "reward": 9.0})
    (logs / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = plot_training_curves(str(tmp_path), str(tmp_path / "curves.png"))
    assert path and os.path.getsize(path) > 0
    assert plot_training_curves(str(tmp_path / "none"), str(tmp_path / "x.png")) is None


def test_the_evaluation_package_imports_matplotlib_only_to_plot():
    """`sparrow chat` and `sparrow rate` read evaluation modules and draw nothing: they do
    not pay for matplotlib's import; the first plot loads it."""
    code = ("import sys, sparrow_jax.evaluation, sparrow_jax.evaluation.plots as plots; "
            "assert 'matplotlib' not in sys.modules, 'imported with the package'; "
            "plots._pyplot(); assert 'matplotlib.pyplot' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_eval_command_writes_the_report(root, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        main(["eval", "--workdir", os.path.join(root, "sft"), "--max-prompts", "6", "--batch-size", "6",
              "--out", str(out), "--baseline", os.path.join(root, "rl")])
    assert stop.value.code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    schema.validate(report, schema.EVAL_REPORT_SCHEMA)
    assert report["baseline"]["name"] == "rl" and report["metrics"]["pref_win_rate"] is not None
    assert "report:" in capsys.readouterr().out
