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
    remote.train_command(LAYOUT, remote.TrainJob("c.py", "gs://b/run", data="gs://b/it's data",
                                                 compilation_cache="gs://b/jax's cache")),
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


def test_train_command_syncs_the_data_dir_first_and_passes_it(tmp_path):
    home = tmp_path / "home"
    (home / "sparrow_jax").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for path, body in ((home / "sparrow_venv" / "bin" / "sparrow", 'echo "args=$*"'),
                       (bin_dir / "gcloud", 'echo "gcloud $*" >> "$HOME/gcloud_calls"')):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    job = remote.TrainJob("experiments/sparrow_70b.py:v5p_128", "gs://example-bucket/run",
                          data="gs://example-bucket/data dir")
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", remote.train_command(LAYOUT, job)], capture_output=True,
                          text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (home / "gcloud_calls").read_text().strip() == (
        f"gcloud storage rsync -r gs://example-bucket/data dir {home}/sparrow_data")
    assert proc.stdout.strip().endswith(f"--config.data.dir={home}/sparrow_data")
    assert (home / "sparrow_data").is_dir()


def test_data_must_be_a_gcs_url_and_not_given_twice():
    with pytest.raises(LaunchError, match="gs:// URL"):
        remote.TrainJob("c.py", "gs://b/run", data="/local/data")
    with pytest.raises(LaunchError, match="drop --config.data.dir"):
        remote.TrainJob("c.py", "gs://b/run", ("--config.data.dir=x",), data="gs://b/data")


def test_unsafe_remote_paths_are_rejected():
    for bad in ("../x", "a b", "$(rm -rf /)", "~/x", "/abs"):
        with pytest.raises(LaunchError):
            remote.RemoteLayout(code_dir=bad)
