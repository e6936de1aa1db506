"""A SIGKILLed run, rerun with the same command, ends bitwise equal to an uninterrupted run."""
import os
import signal
import time

import numpy as np
import pytest

from loop_helpers import TINY, make_world, sparrow, tiny_overrides


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(str(tmp_path_factory.mktemp("world") / "toy"))


def _final_params(workdir: str, step: int) -> dict:
    """Leaves of the saved train state at `step`, read back with orbax (no target)."""
    import orbax.checkpoint as ocp
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    tree = ocp.StandardCheckpointer().restore(path)
    import jax
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _train(world, workdir, steps, *extra):
    return sparrow("train", "--config", f"{TINY}:sft", "--workdir", workdir,
                   *tiny_overrides(world, steps=steps, **{"train.checkpoint_every": 10}), *extra)


def test_sigkill_then_rerun_equals_uninterrupted_run(world, tmp_path):
    steps = 300
    reference = _train(world, str(tmp_path / "reference"), steps)
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out

    workdir = str(tmp_path / "killed")
    victim = _train(world, workdir, steps)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 300
    # Kill once at least one checkpoint is committed and the run is still going.
    while time.time() < deadline:
        done = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
        if done and victim.poll() is None:
            break
        assert victim.poll() is None, "the run finished before it could be killed"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    killed_at = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    assert killed_at < steps

    rerun = _train(world, workdir, steps)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    assert "resuming sft from step" in out

    expected, actual = _final_params(str(tmp_path / "reference"), steps), _final_params(workdir, steps)
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
