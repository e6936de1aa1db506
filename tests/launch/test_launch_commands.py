"""Exact gcloud command lines printed by `launch/tpu.py ... --dry-run`."""
import io
import os
import shlex
import subprocess
import sys
import tempfile

import pytest

from sparrow_jax.launch import cli, gcloud
from sparrow_jax.launch.gcloud import LaunchError, TpuSpec
from sparrow_jax.launch.runner import DryRunRunner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V5P = ["--name", "sparrow-v5p", "--zone", "us-east5-a", "--project", "example-project"]
V4 = ["--name", "sparrow-v4", "--zone", "us-central2-b", "--project", "example-project"]
# The pod configs train the rl stage, whose config check needs its three sources.
SOURCES = ["--config.train.init_from=gs://example-bucket/sparrow/sft",
           "--config.rl.pref_rm_from=gs://example-bucket/sparrow/pref_rm",
           "--config.rl.rule_rm_from=gs://example-bucket/sparrow/rule_rm"]

SETUP_TAIL = (
    "command -v python3.11 >/dev/null || (sudo apt-get update -qq && sudo apt-get install -y -qq "
    "python3.11 python3.11-venv); [ -x $HOME/sparrow_venv/bin/python ] || python3.11 -m venv "
    "$HOME/sparrow_venv; $HOME/sparrow_venv/bin/pip install --quiet --upgrade pip; "
    "$HOME/sparrow_venv/bin/pip install --quiet -e \"$HOME/sparrow_jax[tpu]\"'")


@pytest.fixture
def dry(capsys):
    """Run `launch/tpu.py ARGV --dry-run` in-process; return the printed lines."""
    def run(argv):
        code = cli.main([*argv, "--dry-run"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return captured.out.splitlines()
    return run


def test_v5p_128_create_spot(dry):
    assert dry(["create", *V5P, "--type", "v5p-128", "--spot"]) == [
        "gcloud compute tpus tpu-vm create sparrow-v5p --zone=us-east5-a --project=example-project "
        "--accelerator-type=v5p-128 --version=v2-alpha-tpuv5 --spot"]


def test_v5p_128_create_queued_resource(dry):
    assert dry(["create", *V5P, "--type", "v5p-128", "--spot", "--queued"]) == [
        "gcloud compute tpus queued-resources create sparrow-v5p-qr --node-id=sparrow-v5p "
        "--zone=us-east5-a --project=example-project --accelerator-type=v5p-128 "
        "--runtime-version=v2-alpha-tpuv5 --spot"]


def test_v4_256_create_with_explicit_runtime_version(dry):
    assert dry(["create", *V4, "--type", "v4-256"]) == [
        "gcloud compute tpus tpu-vm create sparrow-v4 --zone=us-central2-b "
        "--project=example-project --accelerator-type=v4-256 --version=tpu-ubuntu2204-base"]
    assert dry(["create", *V4, "--type", "v4-256", "--runtime-version", "v2-alpha-tpuv4",
                "--queued"]) == [
        "gcloud compute tpus queued-resources create sparrow-v4-qr --node-id=sparrow-v4 "
        "--zone=us-central2-b --project=example-project --accelerator-type=v4-256 "
        "--runtime-version=v2-alpha-tpuv4"]


def test_setup_from_git_on_all_workers(dry):
    assert dry(["setup", *V5P, "--repo", "https://github.com/example/sparrow_jax.git",
                "--ref", "v0.1"]) == [
        "gcloud compute tpus tpu-vm ssh sparrow-v5p --zone=us-east5-a --project=example-project "
        "--worker=all --command 'set -e; [ -d $HOME/sparrow_jax/.git ] || git clone --quiet "
        "https://github.com/example/sparrow_jax.git $HOME/sparrow_jax; git -C $HOME/sparrow_jax "
        "fetch --quiet origin v0.1; git -C $HOME/sparrow_jax checkout --quiet --force FETCH_HEAD; "
        + SETUP_TAIL]


def test_setup_copies_this_checkout_to_all_workers(dry):
    archive = os.path.join(tempfile.gettempdir(), "sparrow_jax-sparrow-v4.tar.gz")
    assert dry(["setup", *V4, "--src", REPO]) == [
        f"git -C {REPO} archive --format=tar.gz -o {archive} HEAD",
        f"gcloud compute tpus tpu-vm scp {archive} sparrow-v4:sparrow_jax-src.tar.gz "
        f"--zone=us-central2-b --project=example-project --worker=all",
        "gcloud compute tpus tpu-vm ssh sparrow-v4 --zone=us-central2-b --project=example-project "
        "--worker=all --command 'set -e; rm -rf $HOME/sparrow_jax; mkdir -p $HOME/sparrow_jax; "
        "tar -xzf $HOME/sparrow_jax-src.tar.gz -C $HOME/sparrow_jax; " + SETUP_TAIL]


RUN_V5P = ("gcloud compute tpus tpu-vm ssh sparrow-v5p --zone=us-east5-a --project=example-project "
           "--worker=all --command 'cd $HOME/sparrow_jax && set -o pipefail && PYTHONUNBUFFERED=1 "
           "$HOME/sparrow_venv/bin/sparrow train --config experiments/sparrow_70b.py:v5p_128 "
           "--workdir gs://example-bucket/sparrow/v5p --config.train.learning_rate=1e-06 "
           + " ".join(SOURCES) + " 2>&1 | tee -a $HOME/sparrow_run.log'")


def test_v5p_128_run_on_all_workers_with_overrides(dry):
    assert dry(["run", *V5P, "--type", "v5p-128", "--config", "experiments/sparrow_70b.py:v5p_128",
                "--workdir", "gs://example-bucket/sparrow/v5p",
                "--config.train.learning_rate=1e-06", *SOURCES]) == [RUN_V5P]


def test_v5p_128_run_syncs_the_data_dir_to_every_worker(dry):
    assert dry(["run", *V5P, "--type", "v5p-128", "--config", "experiments/sparrow_70b.py:v5p_128",
                "--workdir", "gs://example-bucket/sparrow/v5p",
                "--data", "gs://example-bucket/sparrow/data", *SOURCES]) == [
        "gcloud compute tpus tpu-vm ssh sparrow-v5p --zone=us-east5-a --project=example-project "
        "--worker=all --command 'cd $HOME/sparrow_jax && set -o pipefail && mkdir -p "
        "$HOME/sparrow_data && gcloud storage rsync -r gs://example-bucket/sparrow/data "
        "$HOME/sparrow_data && PYTHONUNBUFFERED=1 $HOME/sparrow_venv/bin/sparrow train --config "
        "experiments/sparrow_70b.py:v5p_128 --workdir gs://example-bucket/sparrow/v5p "
        + " ".join(SOURCES) + " --config.data.dir=$HOME/sparrow_data 2>&1 | tee -a "
        "$HOME/sparrow_run.log'"]


def test_babysit_gives_every_attempt_the_compilation_cache(dry):
    lines = dry(["babysit", *V4, "--type", "v4-256", "--config", "experiments/sparrow_70b.py:v4_256",
                 "--workdir", "gs://example-bucket/runs/rl",
                 "--compilation-cache", "gs://example-bucket/jax cache", *SOURCES])
    runs = [line for line in lines if "sparrow train" in line]
    assert len(runs) == 2  # the first attempt and the rerun after a recovery
    for line in runs:
        remote_words = shlex.split(shlex.split(line)[-1])
        assert "JAX_COMPILATION_CACHE_DIR=gs://example-bucket/jax cache" in remote_words
        assert remote_words.index("JAX_COMPILATION_CACHE_DIR=gs://example-bucket/jax cache") < \
            remote_words.index("$HOME/sparrow_venv/bin/sparrow")


def test_v4_256_run_quotes_odd_values(dry):
    [line] = dry(["run", *V4, "--type", "v4-256", "--config", "experiments/sparrow_70b.py:v4_256",
                  "--workdir", "gs://example-bucket/runs/it's", "--config.name=a b", *SOURCES])
    argv = shlex.split(line)
    assert argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sparrow-v4",
                        "--zone=us-central2-b", "--project=example-project", "--worker=all"]
    assert argv[9] == "--command"
    remote_words = shlex.split(argv[10])
    assert remote_words[remote_words.index("--workdir") + 1] == "gs://example-bucket/runs/it's"
    assert "--config.name=a b" in remote_words


def test_multi_host_run_needs_a_gcs_workdir(capsys):
    code = cli.main(["run", *V5P, "--type", "v5p-128", "--config", "x.py", "--workdir", "/tmp/x",
                     "--dry-run"], runner=DryRunRunner(io.StringIO()))
    assert code == 2
    assert "not a gs:// path" in capsys.readouterr().err


def test_delete_vm_and_queued_resource(dry):
    assert dry(["delete", *V5P]) == [
        "gcloud compute tpus tpu-vm delete sparrow-v5p --zone=us-east5-a "
        "--project=example-project --quiet"]
    assert dry(["delete", *V5P, "--queued"]) == [
        "gcloud compute tpus queued-resources delete sparrow-v5p-qr --zone=us-east5-a "
        "--project=example-project --force --quiet"]


def test_logs_tail_worker_0(dry):
    assert dry(["logs", *V4, "--follow", "--lines", "50"]) == [
        "gcloud compute tpus tpu-vm ssh sparrow-v4 --zone=us-central2-b --project=example-project "
        "--worker=0 --command 'tail -n 50 -F $HOME/sparrow_run.log'"]


def test_babysit_dry_run_prints_the_recovery_plan(dry):
    lines = dry(["babysit", *V5P, "--type", "v5p-128", "--spot", "--queued",
                 "--repo", "https://github.com/example/sparrow_jax.git",
                 "--config", "experiments/sparrow_70b.py:v5p_128",
                 "--workdir", "gs://example-bucket/sparrow/v5p",
                 "--config.train.learning_rate=1e-06", *SOURCES])
    commands = [line for line in lines if not line.startswith("#")]
    assert commands[0].startswith("gcloud compute tpus queued-resources describe sparrow-v5p-qr ")
    assert commands[1] == RUN_V5P and commands[-1] == RUN_V5P
    assert commands[2].startswith("gcloud compute tpus queued-resources delete sparrow-v5p-qr ")
    assert commands[3].startswith("gcloud compute tpus queued-resources create sparrow-v5p-qr ")


def test_project_omitted_when_not_given():
    spec = TpuSpec(name="t", zone="europe-west4-a", accelerator_type="v5litepod-16")
    assert gcloud.create(spec) == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "t", "--zone=europe-west4-a",
        "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="Bad_Name", zone="z", accelerator_type="v4-8"), "TPU name"),
    (dict(name="ok", zone="", accelerator_type="v4-8"), "no zone"),
    (dict(name="ok", zone="z", accelerator_type="v9-8"), "unknown TPU type"),
])
def test_bad_specs_are_clear_errors(kwargs, message):
    with pytest.raises(LaunchError, match=message):
        TpuSpec(**kwargs)


def test_create_without_type_is_an_error():
    with pytest.raises(LaunchError, match="no TPU type"):
        gcloud.create(TpuSpec(name="t", zone="z"))


def test_script_entry_point_runs_without_installing():
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "tpu.py"), "delete", *V5P, "--dry-run"],
        capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "gcloud compute tpus tpu-vm delete sparrow-v5p --zone=us-east5-a "
        "--project=example-project --quiet")
