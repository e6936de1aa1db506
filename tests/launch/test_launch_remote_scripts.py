"""The remote shell scripts: valid bash, and the train command keeps train's exit code."""
import os
import shutil
import stat
import subprocess

import pytest

from sparrow_jax.launch import remote
from sparrow_jax.launch.gcloud import LaunchError

LAYOUT = remote.RemoteLayout()
JOB = remote.TrainJob("experiments/tiny_cpu.py", "gs://example-bucket/it's a run",
                      ("--config.train.steps=3",))

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.mark.parametrize("script", [
    remote.setup_from_archive(LAYOUT),
    remote.setup_from_git(LAYOUT, "https://github.com/example/sparrow_jax.git", "v0.1"),
    remote.train_command(LAYOUT, JOB),
    remote.tail_log(LAYOUT, 10, follow=True),
])
def test_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", "-c", script], check=True, timeout=30)


@pytest.mark.parametrize("exit_code", [0, 3])
def test_train_command_tees_the_log_and_keeps_the_exit_code(tmp_path, exit_code):
    home = tmp_path / "home"
    (home / "sparrow_jax").mkdir(parents=True)
    fake = home / "sparrow_venv" / "bin" / "sparrow"
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/bash\necho "pwd=$(basename "$PWD") args=$*"\nexit {exit_code}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc = subprocess.run(["bash", "-c", remote.train_command(LAYOUT, JOB)], capture_output=True,
                          text=True, env={**os.environ, "HOME": str(home)}, timeout=30)
    assert proc.returncode == exit_code
    expected = ("pwd=sparrow_jax args=train --config experiments/tiny_cpu.py --workdir "
                "gs://example-bucket/it's a run --config.train.steps=3")
    assert proc.stdout.strip() == expected
    assert (home / "sparrow_run.log").read_text().strip() == expected


def test_unsafe_remote_paths_are_rejected():
    for bad in ("../x", "a b", "$(rm -rf /)", "~/x", "/abs"):
        with pytest.raises(LaunchError):
            remote.RemoteLayout(code_dir=bad)
