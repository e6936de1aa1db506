"""launch/README.md's "Starting from open weights" commands are ones the tooling accepts: each
`python launch/tpu.py run` line validates its config in a dry run (its stage, for training) and
prints the `sparrow train` it would run; the `sparrow import` / `export` lines parse with
sparrow's own parser and the import uses the config's frozen split."""
import io
import os
import re
import shlex

import pytest

from sparrow_jax import config as config_lib
from sparrow_jax.cli import build_parser
from sparrow_jax.launch import cli
from sparrow_jax.launch.runner import DryRunRunner
from test_launch_preflight import README

SECTION = "## Starting from open weights"
ENV = {"TPU": "sparrow-gemma", "RUNS": "gs://example-bucket/sparrow/gemma_2b",
       "DATA": "gs://example-bucket/sparrow/data",
       "WEIGHTS": "gs://example-bucket/weights/gemma-2b"}


def _section() -> str:
    text = open(README).read()
    start = text.index(SECTION)
    end = text.index("\n## ", start + 1)
    return text[start:end].replace("\\\n", " ")


def _fill(line: str) -> str:
    line = line.replace("<your-bucket>", "example-bucket")
    return re.sub(r"\$(\w+)", lambda m: ENV[m.group(1)], line)


def _run_lines() -> list[list[str]]:
    lines = re.findall(r"^python launch/tpu\.py run .*$", _section(), re.M)
    return [shlex.split(_fill(line))[2:] + ["--zone", "us-east5-a"] for line in lines]


def test_the_section_runs_every_stage():
    stages = []
    for argv in _run_lines():
        flags = dict(a.split("=", 1) for a in argv if a.startswith("--config."))
        stages.append(flags.get("--config.train.stage", "rl"))
    assert stages == ["sft", "pref_rm", "rule_rm", "rl"]


@pytest.mark.parametrize("index", range(4))
def test_each_run_validates_in_a_dry_run(index, monkeypatch, capsys):
    calls = []
    real = config_lib.validate

    def spy(cfg, source="config", *, training=False):
        calls.append((cfg.train.stage, training, cfg.train.init_from))
        return real(cfg, source, training=training)
    monkeypatch.setattr(config_lib, "validate", spy)
    argv = _run_lines()[index]
    runner = DryRunRunner(io.StringIO())
    assert cli.main([*argv, "--dry-run"], runner=runner) == 0, capsys.readouterr().err
    stage = ["sft", "pref_rm", "rule_rm", "rl"][index]
    source = ENV["RUNS"] + ("/imported" if stage == "sft" else "/sft")
    assert (stage, True, source) in calls
    [command] = runner.commands
    assert "sparrow train --config experiments/gemma_2b.py:v5e_8" in command[-1]


def test_import_and_export_lines_parse_and_match_the_config():
    commands = re.findall(r"~/sparrow_venv/bin/sparrow ((?:import|export) [^\n\"]*)",
                          _section())
    assert [c.split()[0] for c in commands] == ["import", "export"]
    parser = build_parser()
    args = parser.parse_args(shlex.split(commands[0]))
    assert args.command == "import" and args.hf == "~/gemma-2b"
    repo = os.path.dirname(os.path.dirname(README))
    cfg = config_lib.load_experiment(os.path.join(repo, "experiments", "gemma_2b.py:v5e_8"))
    from sparrow_jax.hf.importer import default_frozen_layers
    frozen = args.n_frozen_layers
    assert (default_frozen_layers(cfg.model.n_layers) if frozen is None else frozen) == \
        cfg.model.n_frozen_layers
    args = parser.parse_args(shlex.split(commands[1]))
    assert args.command == "export" and args.workdir == "~/rl"
    assert "gcloud storage cp -r $WEIGHTS ~/" in _section()
