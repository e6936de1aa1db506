"""A SIGKILLed run, rerun with the same command, ends bitwise equal to an uninterrupted run."""
import pytest

from loop_helpers import TINY, check_sigkill_resume, make_world, sparrow, tiny_overrides

pytestmark = pytest.mark.long_running(65)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(str(tmp_path_factory.mktemp("world") / "toy"))


def _train(world, workdir, steps, *extra):
    return sparrow("train", "--config", f"{TINY}:sft", "--workdir", workdir,
                   *tiny_overrides(world, steps=steps, **{"train.checkpoint_every": 10}), *extra)


def test_sigkill_then_rerun_equals_uninterrupted_run(world, tmp_path):
    steps = 300
    check_sigkill_resume(lambda workdir: _train(world, workdir, steps), str(tmp_path), steps, "sft",
                         timeout=600)


def test_changed_model_shape_is_an_error_naming_the_key(world, tmp_path):
    workdir = str(tmp_path / "run")
    first = _train(world, workdir, 4)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    # The command says how it set up host memory (sparrow_jax/host_memory.py).
    assert "host memory: glibc malloc: one arena" in out
    second = _train(world, workdir, 8, "--config.model.d_ff=96")
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 2, out
    assert "model.d_ff: checkpoint 64, config 96" in out
