"""Config values out of range or of the wrong kind are refused with the key named, before
anything runs (issue 22's examples, one test each), and `sparrow train` exits 2 on them
without creating its workdir."""
import os
import subprocess
import sys

import pytest

from sparrow_jax.config import ConfigError, apply_overrides, default_config, load_experiment
from sparrow_jax.config_ranges import RANGES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "tiny_cpu.py")

REFUSED = [
    ("train.keep_checkpoints=0", "'train.keep_checkpoints' must be >= 1"),
    ("train.steps=-5", "'train.steps' must be >= 1"),
    ("train.learning_rate=nan", "'train.learning_rate' must be a finite number"),
    ("train.learning_rate=inf", "'train.learning_rate' must be a finite number"),
    ("train.learning_rate=-1e-3", "'train.learning_rate' must be > 0"),
    ("train.learning_rate=0", "'train.learning_rate' must be > 0"),
    ("train.warmup_steps=-3", "'train.warmup_steps' must be >= 0"),
    ("train.log_every=0", "'train.log_every' must be >= 1"),
    ("train.seq_len=0", "'train.seq_len' must be >= 4"),
    ("train.checkpoint_every=0", "'train.checkpoint_every' must be >= 1"),
    ("model=5", "'model' is a section"),
    ("mesh.logical_axis_rules=5", "'mesh.logical_axis_rules' takes a list"),
    ("mesh.logical_axis_rules=[5]", "mesh.logical_axis_rules: entry 5"),
    ("loss.pref_aux_weight=-1.0", "'loss.pref_aux_weight' must be >= 0"),
    ("rl.format_penalty=nan", "'rl.format_penalty' must be a finite number"),
    ("distributed.process_id=2", "'distributed.process_id' must be < distributed.num_processes"),
]


@pytest.mark.parametrize("override,message", REFUSED)
def test_refused_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        apply_overrides(default_config(), [f"--config.{override}"])


def test_every_range_names_a_schema_key():
    flat = default_config().to_dict()
    for key in RANGES:
        node = flat
        for part in key.split("."):
            assert part in node, key
            node = node[part]


@pytest.mark.parametrize("variant", ["lm", "sft", "pref_rm", "rule_rm", "rl"])
def test_shipped_configs_are_in_range(variant):
    load_experiment(f"{TINY}:{variant}")


def test_train_command_exits_2_and_keeps_nothing(tmp_path):
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "sparrow_jax", "train", "--config", f"{TINY}:sft",
                          "--workdir", str(workdir), "--config.train.keep_checkpoints=0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 2
    assert "train.keep_checkpoints" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not workdir.exists()
