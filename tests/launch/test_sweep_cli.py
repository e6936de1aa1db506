"""`sparrow sweep` through the real CLI: dry-run, --tpu dry-run, --local, --summarize."""
import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from sparrow_jax import cli, sweeps
from sparrow_jax.commands import sweep as sweep_command

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "experiments", "tiny_cpu.py")
NAMES = ["learning_rate=0.001,n_frozen_layers=1", "learning_rate=0.001,n_frozen_layers=2",
         "learning_rate=0.0003,n_frozen_layers=1", "learning_rate=0.0003,n_frozen_layers=2"]


def sparrow(argv, capsys):
    """Run `sparrow ARGV` in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_dry_run_lists_members_workdirs_and_commands(capsys, tmp_path):
    root = str(tmp_path / "sweep")
    code, out, _ = sparrow(["sweep", "--config", TINY, "--workdir", root, "--dry-run",
                            "--config.train.steps=3"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "4 sweep members"
    assert lines[1] == f"[0] {NAMES[0]}"
    assert lines[2] == "    overrides: --config.train.learning_rate=0.001 --config.model.n_frozen_layers=1"
    assert lines[3] == f"    workdir:   {root}/{NAMES[0]}"
    assert lines[4] == "    command:   " + shlex.join([
        sys.executable, "-m", "sparrow_jax", "train", "--config", TINY, "--workdir",
        f"{root}/{NAMES[0]}", "--config.train.steps=3", "--config.train.learning_rate=0.001",
        "--config.model.n_frozen_layers=1"])
    assert [line.split("] ", 1)[1] for line in lines if line.startswith("[")] == NAMES
    assert not os.path.exists(root)  # nothing ran, nothing created


def test_dry_run_is_the_default_and_json(capsys, tmp_path):
    code, out, _ = sparrow(["sweep", "--config", TINY, "--workdir", str(tmp_path), "--json"],
                           capsys)
    assert code == 0
    plan = json.loads(out)
    assert [p["name"] for p in plan] == NAMES
    assert plan[3]["overrides"] == {"train.learning_rate": 3e-4, "model.n_frozen_layers": 2}
    assert plan[3]["command"][-2:] == ["--config.train.learning_rate=0.0003",
                                       "--config.model.n_frozen_layers=2"]


def test_tpu_dry_run_prints_gcloud_commands(capsys):
    code, out, _ = sparrow(
        ["sweep", "--config", os.path.join(REPO, "experiments", "sparrow_70b.py") + ":v5p_128",
         "--workdir", "gs://example-bucket/sweeps/70b", "--tpu", "sparrow-v5p", "--zone",
         "us-east5-a", "--project", "example-project", "--type", "v5p-128", "--dry-run"], capsys)
    assert code == 0
    commands = [line.split("command:   ", 1)[1] for line in out.splitlines() if "command:" in line]
    assert len(commands) == 4
    assert commands[0].startswith(
        "gcloud compute tpus tpu-vm ssh sparrow-v5p --zone=us-east5-a --project=example-project "
        "--worker=all --command 'cd $HOME/sparrow_jax && set -o pipefail && PYTHONUNBUFFERED=1 "
        "$HOME/sparrow_venv/bin/sparrow train --config ")
    assert ("--workdir gs://example-bucket/sweeps/70b/learning_rate=1e-06,alpha=0.05 "
            "--config.train.learning_rate=1e-06 --config.rl.alpha=0.05 2>&1") in commands[0]


def test_tpu_members_sync_the_data_dir(capsys):
    code, out, _ = sparrow(
        ["sweep", "--config", os.path.join(REPO, "experiments", "sparrow_70b.py") + ":v5p_128",
         "--workdir", "gs://example-bucket/sweeps/70b", "--tpu", "sparrow-v5p", "--zone",
         "us-east5-a", "--project", "example-project", "--type", "v5p-128",
         "--data", "gs://example-bucket/data", "--dry-run"], capsys)
    assert code == 0
    commands = [line.split("command:   ", 1)[1] for line in out.splitlines() if "command:" in line]
    assert len(commands) == 4
    for command in commands:
        assert "gcloud storage rsync -r gs://example-bucket/data $HOME/sparrow_data && " in command
        assert command.endswith("--config.data.dir=$HOME/sparrow_data 2>&1 "
                                "| tee -a $HOME/sparrow_run.log'")


def test_bad_member_is_an_error_before_anything_runs(capsys, tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text(textwrap.dedent("""
        from sparrow_jax.config import default_config
        def get_config():
            return default_config()
        def get_sweep():
            return [{"train.learning_rate": 0.1}, {"train.batch_size": "many"}]
    """))
    code, out, err = sparrow(["sweep", "--config", str(exp), "--workdir", str(tmp_path / "r"),
                              "--local"], capsys)
    assert code == 2
    assert "sweep member 1 (batch_size=many)" in err and "train.batch_size" in err
    assert not (tmp_path / "r").exists()


def test_dry_run_rejects_a_model_sweep_from_one_shared_init_from(capsys, tmp_path):
    # The tiny sweep varies model.n_frozen_layers: from one shared sft checkpoint only one
    # value can load, so --dry-run already refuses, naming the key and the source.
    code, out, err = sparrow(["sweep", "--config", TINY, "--workdir", str(tmp_path / "r"),
                              "--dry-run", "--config.train.init_from=runs/sft"], capsys)
    assert code == 2 and out == ""
    assert "model.n_frozen_layers" in err and "train.init_from='runs/sft'" in err


def test_real_entry_point_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sparrow_jax", "sweep", "--config", TINY,
                           "--workdir", str(tmp_path), "--dry-run"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "4 sweep members"
    assert f"[3] {NAMES[3]}" in proc.stdout


def fake_train(monkeypatch, fail_name=None):
    """Replace `python -m sparrow_jax train` by a tiny script writing metrics.jsonl."""
    script = textwrap.dedent("""
        import json, os, sys
        workdir = sys.argv[sys.argv.index("--workdir") + 1]
        if os.path.basename(workdir) == FAIL:
            sys.exit(3)
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": 5, "split": "train", "loss": 1.5}) + "\\n")
        with open(os.path.join(workdir, "calls"), "a") as f:
            f.write(" ".join(sys.argv[1:]) + "\\n")
    """).replace("FAIL", repr(fail_name))

    def command(config, workdir, args):
        return [sys.executable, "-c", script, "--config", config, "--workdir", workdir, *args]
    monkeypatch.setattr(sweep_command, "local_command", command)


def test_local_runs_each_member_marks_done_and_skips_done(capsys, tmp_path, monkeypatch):
    fake_train(monkeypatch, fail_name=NAMES[3])
    root = tmp_path / "sweep"
    code, out, err = sparrow(["sweep", "--config", TINY, "--workdir", str(root), "--local"], capsys)
    assert code == 1 and "1 of 4 members failed" in err
    for name in NAMES[:3]:
        assert (root / name / "DONE").exists()
        calls = (root / name / "calls").read_text().splitlines()
        assert len(calls) == 1 and calls[0].endswith(
            " ".join(sweeps.override_args(json.loads((root / name / "sweep_member.json")
                                                     .read_text())["overrides"])))
    assert not (root / NAMES[3] / "DONE").exists()

    fake_train(monkeypatch)  # second pass: only the failed member runs again
    code, out, _ = sparrow(["sweep", "--config", TINY, "--workdir", str(root), "--local"], capsys)
    assert code == 0
    assert out.count("DONE, skipping") == 3
    assert len((root / NAMES[0] / "calls").read_text().splitlines()) == 1
    assert (root / NAMES[3] / "DONE").exists()


def make_member_dirs(root):
    (root / NAMES[0]).mkdir(parents=True)
    (root / NAMES[0] / "DONE").write_text("")
    (root / NAMES[0] / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 10, "split": "train", "loss": 2.0},
        {"step": 10, "split": "eval", "loss": 2.5, "accuracy": 0.25},
        {"step": 20, "split": "train", "loss": 1.25},
    ]) + "\n")
    (root / NAMES[0] / "report.json").write_text(json.dumps(
        {"oracle": {"violation_rate": 0.125}, "n": 40}))
    (root / NAMES[1]).mkdir()
    (root / NAMES[1] / "metrics.jsonl").write_text(
        json.dumps({"step": 7, "split": "train", "loss": 3.0}) + "\n{\"step\": 8, \"spl")  # torn line


def test_summarize_table(capsys, tmp_path):
    make_member_dirs(tmp_path)
    code, out, _ = sparrow(["sweep", "--config", TINY, "--workdir", str(tmp_path), "--summarize",
                            "--metrics", "step,loss,eval/accuracy,report.oracle.violation_rate"],
                           capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["name", "train.learning_rate", "model.n_frozen_layers", "status", "step",
                       "loss", "eval/accuracy", "report.oracle.violation_rate"]
    assert rows[1] == [NAMES[0], "0.001", "1", "done", "20", "1.25", "0.25", "0.125"]
    assert rows[2] == [NAMES[1], "0.001", "2", "started", "7", "3", "-", "-"]
    assert rows[3] == [NAMES[2], "0.0003", "1", "missing", "-", "-", "-", "-"]
    assert len(rows) == 5


def test_summarize_reads_the_newest_report_sparrow_eval_wrote(capsys, tmp_path):
    make_member_dirs(tmp_path)
    (tmp_path / NAMES[0] / "report.json").unlink()
    older = tmp_path / NAMES[0] / "eval" / "step_20"
    newer = tmp_path / NAMES[0] / "eval" / "step_20_at8"  # `sparrow eval --n-best 8`, run later
    for directory, rate in ((older, 0.25), (newer, 0.0625)):
        directory.mkdir(parents=True)
        (directory / "report.json").write_text(json.dumps({"oracle": {"violation_rate": rate}}))
    os.utime(older / "report.json", (1_000_000, 1_000_000))
    code, out, _ = sparrow(["sweep", "--config", TINY, "--workdir", str(tmp_path), "--summarize",
                            "--metrics", "report.oracle.violation_rate"], capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[1][-1] == "0.0625" and rows[2][-1] == "-"


def test_summarize_json_default_columns(capsys, tmp_path):
    make_member_dirs(tmp_path)
    code, out, _ = sparrow(["sweep", "--config", TINY, "--workdir", str(tmp_path), "--summarize",
                            "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == NAMES
    assert rows[0]["metrics"] == {"step": 20, "loss": 1.25}
    assert rows[0]["overrides"] == {"train.learning_rate": 0.001, "model.n_frozen_layers": 1}
    assert rows[1]["status"] == "started" and rows[3]["metrics"] == {"step": None, "loss": None}
