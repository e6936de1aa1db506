"""A SIGKILLed run, rerun with the same command, ends bitwise equal to an uninterrupted run."""
import numpy as np
import pytest

from loop_helpers import TINY, kill_after_first_checkpoint, make_world, sparrow, state_leaves, tiny_overrides


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(str(tmp_path_factory.mktemp("world") / "toy"))


def _train(world, workdir, steps, *extra):
    return sparrow("train", "--config", f"{TINY}:sft", "--workdir", workdir,
                   *tiny_overrides(world, steps=steps, **{"train.checkpoint_every": 10}), *extra)


def test_sigkill_then_rerun_equals_uninterrupted_run(world, tmp_path):
    steps = 300
    reference = _train(world, str(tmp_path / "reference"), steps)
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out

    workdir = str(tmp_path / "killed")
    assert kill_after_first_checkpoint(_train(world, workdir, steps), workdir) < steps

    rerun = _train(world, workdir, steps)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    assert "resuming sft from step" in out

    expected, actual = state_leaves(str(tmp_path / "reference"), steps), state_leaves(workdir, steps)
    assert expected.keys() == actual.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def test_changed_model_shape_is_an_error_naming_the_key(world, tmp_path):
    workdir = str(tmp_path / "run")
    first = _train(world, workdir, 4)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    second = _train(world, workdir, 8, "--config.model.d_ff=96")
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 2, out
    assert "model.d_ff: checkpoint 64, config 96" in out
