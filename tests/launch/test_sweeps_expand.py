"""Sweep expansion: product/zip/chain, stable unique names, validation errors."""
import os
import textwrap

import pytest

from sparrow_jax import sweeps
from sparrow_jax.sweeps import SweepError, chain, product, sweep_axis, zip_axes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "experiments", "tiny_cpu.py")
BIG = os.path.join(REPO, "experiments", "sparrow_70b.py")


def test_product_last_axis_fastest():
    assert product(sweep_axis("train.learning_rate", [1e-3, 3e-4]),
                   sweep_axis("model.n_frozen_layers", [1, 2])) == [
        {"train.learning_rate": 1e-3, "model.n_frozen_layers": 1},
        {"train.learning_rate": 1e-3, "model.n_frozen_layers": 2},
        {"train.learning_rate": 3e-4, "model.n_frozen_layers": 1},
        {"train.learning_rate": 3e-4, "model.n_frozen_layers": 2}]


def test_zip_and_chain():
    zipped = zip_axes(sweep_axis("train.learning_rate", [1e-3, 3e-4]),
                      sweep_axis("train.warmup_steps", [10, 20]))
    assert zipped == [{"train.learning_rate": 1e-3, "train.warmup_steps": 10},
                      {"train.learning_rate": 3e-4, "train.warmup_steps": 20}]
    assert chain([{}], zipped) == [{}, *zipped]
    with pytest.raises(SweepError, match="different lengths"):
        zip_axes(sweep_axis("a.b", [1, 2]), sweep_axis("a.c", [1]))
    with pytest.raises(SweepError, match="'a.b' is set by two"):
        product(sweep_axis("a.b", [1]), sweep_axis("a.b", [2]))
    with pytest.raises(SweepError, match="no values"):
        sweep_axis("a.b", [])


def test_names_are_readable_unique_and_independent_of_order():
    members = product(sweep_axis("train.learning_rate", [1e-3, 3e-4]),
                      sweep_axis("model.n_frozen_layers", [1, 2]))
    expanded = sweeps.expand(members, "/runs/sweep")
    assert [m.name for m in expanded] == [
        "learning_rate=0.001,n_frozen_layers=1", "learning_rate=0.001,n_frozen_layers=2",
        "learning_rate=0.0003,n_frozen_layers=1", "learning_rate=0.0003,n_frozen_layers=2"]
    assert expanded[0].workdir == "/runs/sweep/learning_rate=0.001,n_frozen_layers=1"
    assert expanded[0].args == ["--config.train.learning_rate=0.001",
                                "--config.model.n_frozen_layers=1"]
    reordered = sweeps.expand(list(reversed(members)), "/runs/sweep")
    assert {m.name for m in reordered} == {m.name for m in expanded}
    assert sweeps.expand(members, "/runs/sweep") == expanded  # deterministic


def test_name_collisions_get_a_hash_and_long_keys_are_disambiguated():
    expanded = sweeps.expand([{"name": "a/b"}, {"name": "a_b"}], "gs://bucket/root/")
    assert len({m.name for m in expanded}) == 2
    assert all(m.name.startswith("name=a_b-") for m in expanded)
    assert expanded[0].workdir == f"gs://bucket/root/{expanded[0].name}"
    both = sweeps.expand([{"train.seed": 1, "distributed.seed": 2}], "/r")  # same leaf name
    assert both[0].name == "train.seed=1,distributed.seed=2"
    assert sweeps.expand([{}], "/r")[0].name == "base"
    long = sweeps.expand([{"name": "x" * 300}], "/r")[0].name
    assert len(long) <= sweeps.MAX_NAME_LENGTH


def test_duplicate_members_are_an_error():
    with pytest.raises(SweepError, match="member 1 repeats member 0"):
        sweeps.expand([{"train.seed": 1}, {"train.seed": 1}], "/r")


def test_experiment_sweeps_are_valid():
    tiny = sweeps.plan(TINY, "/r")
    assert len(tiny) == 4
    big = sweeps.plan(BIG + ":v5p_128", "gs://bucket/70b")
    assert [m.name for m in big][0] == "learning_rate=1e-06,alpha=0.05"


def write_experiment(tmp_path, sweep_body):
    path = tmp_path / "exp.py"
    path.write_text(textwrap.dedent(f"""
        from sparrow_jax.config import default_config
        from sparrow_jax.sweeps import product, sweep_axis

        def get_config():
            return default_config()

        def get_sweep():
            return {sweep_body}
    """))
    return str(path)


def test_bad_member_error_names_member_and_key(tmp_path):
    path = write_experiment(tmp_path, '[{"train.seed": 1}, {"train.seed": 2, "train.learnin_rate": 0.1}]')
    with pytest.raises(SweepError) as err:
        sweeps.plan(path, "/r")
    message = str(err.value)
    assert "sweep member 1" in message and "train.learnin_rate" in message


def test_bad_value_error_names_member_and_key(tmp_path):
    path = write_experiment(tmp_path, 'product(sweep_axis("model.n_frozen_layers", [1, 9]))')
    with pytest.raises(SweepError, match=r"sweep member 1 \(n_frozen_layers=9\).*n_frozen_layers"):
        sweeps.plan(path, "/r")


def test_command_line_override_may_not_clash_with_swept_key():
    with pytest.raises(SweepError, match="'train.learning_rate' is both swept"):
        sweeps.plan(TINY, "/r", ["--config.train.learning_rate=0.1"])
    assert len(sweeps.plan(TINY, "/r", ["--config.train.steps=5"])) == 4


def test_experiment_without_get_sweep(tmp_path):
    path = tmp_path / "nosweep.py"
    path.write_text("def get_config():\n    pass\n")
    with pytest.raises(SweepError, match="defines no get_sweep"):
        sweeps.load_sweep(str(path))


def test_launch_and_sweep_modules_do_not_import_jax():
    import subprocess
    import sys
    code = ("import sys, sparrow_jax.launch.cli, sparrow_jax.sweeps, sparrow_jax.commands.sweep; "
            "sweeps = sys.modules['sparrow_jax.sweeps']; "
            f"sweeps.plan({BIG!r} + ':v5p_128', 'gs://b/r'); "
            "assert 'jax' not in sys.modules, 'jax imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
