"""`run` and `babysit` load and validate the job's config here before any gcloud command."""
import io
import os
import re
import shlex
import sys

import pytest

from sparrow_jax import config as config_lib
from sparrow_jax.launch import cli, preflight, remote
from sparrow_jax.launch.gcloud import LaunchError
from sparrow_jax.launch.runner import DryRunRunner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, "launch", "README.md")
ENV = {"TPU": "sparrow-v5p", "RUNS": "gs://example-bucket/sparrow/70b",
       "DATA": "gs://example-bucket/sparrow/data"}


def readme_command(action: str) -> list[str]:
    """The README's first `python launch/tpu.py ACTION ...` command (continuation lines joined,
    $TPU / $RUNS / $DATA filled in), as launcher arguments."""
    text = open(README).read().replace("\\\n", " ")
    line = re.search(rf"^python launch/tpu\.py {action} .*$", text, re.M).group(0)
    line = line.replace("<your-bucket>", "example-bucket")
    line = re.sub(r"\$(\w+)", lambda m: ENV[m.group(1)], line)
    return shlex.split(line)[2:] + ["--zone", "us-east5-a"]


class NoCommands:
    """A runner that fails the test if any command is run."""

    def run(self, argv, **_):
        raise AssertionError(f"a command ran: {argv}")


@pytest.fixture
def validations(monkeypatch):
    """Every validate(...) call the launcher makes, as (stage, training) pairs."""
    calls = []
    real = config_lib.validate

    def spy(cfg, source="config", *, training=False):
        calls.append((cfg.train.stage, training))
        return real(cfg, source, training=training)
    monkeypatch.setattr(config_lib, "validate", spy)
    return calls


@pytest.mark.parametrize("action", ["run", "babysit"])
def test_the_readme_rl_example_validates_its_config_in_a_dry_run(action, validations, capsys):
    argv = readme_command(action)
    assert "--config.rl.pref_rm_from=gs://example-bucket/sparrow/70b/pref_rm" in argv
    runner = DryRunRunner(io.StringIO())
    assert cli.main([*argv, "--dry-run"], runner=runner) == 0, capsys.readouterr().err
    assert ("rl", True) in validations
    if action == "run":
        [command] = runner.commands
        assert "sparrow train --config experiments/sparrow_70b.py:v5p_128" in command[-1]


BAD = [
    (["--config.train.learnin_rate=1e-6"], "train.learnin_rate"),
    (["--config.train.batch_size=many"], "train.batch_size"),
    (["--config.rl.evidence=sometimes"], "rl.evidence"),
    (["--config.rl.temperature=0.7"], "rl.temperature"),
    (["--config.rl.top_k=40"], "rl.top_k"),
    (["--config.rl.rule_rm_from="], "rl.rule_rm_from"),
    (["--config.train.init_from="], "train.init_from"),
]


@pytest.mark.parametrize("action", ["run", "babysit"])
@pytest.mark.parametrize("extra, key", BAD)
def test_a_bad_override_is_refused_before_any_command(action, extra, key, capsys):
    argv = [*readme_command(action), *extra]
    for dry, runner in ((["--dry-run"], DryRunRunner(io.StringIO())), ([], NoCommands())):
        assert cli.main([*argv, *dry], runner=runner) == 2
        out, err = capsys.readouterr()
        assert key in err and out == ""
        assert getattr(runner, "commands", []) == []


def test_the_printed_dry_run_has_no_command_after_a_refusal(capsys):
    """Through the default runner (stdout), as a user sees it."""
    argv = [*readme_command("run"), "--config.rl.top_p=0.5", "--dry-run"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "rl.top_p" in err and "gcloud" not in err


def test_an_sft_run_needs_no_rl_sources():
    job = remote.TrainJob("experiments/sparrow_70b.py:v5p_128", "gs://b/sft",
                          ("--config.train.stage=sft", "--config.train.init_from=gs://b/lm"))
    assert preflight.check_train_config(job, REPO).train.stage == "sft"


def test_a_missing_experiment_file_is_named():
    job = remote.TrainJob("experiments/nope.py:v5p_128", "gs://b/rl")
    with pytest.raises(LaunchError, match="experiments/nope.py"):
        preflight.check_train_config(job, REPO)


def test_without_ml_collections_the_launcher_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sparrow_jax.config", None)  # import now fails
    job = remote.TrainJob("experiments/sparrow_70b.py:v5p_128", "gs://b/rl")
    with pytest.raises(LaunchError, match="pip install ml_collections"):
        preflight.check_train_config(job, REPO)
