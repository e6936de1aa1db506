"""`launch/tpu.py setup` ships what git tracks at HEAD, nothing else lying in the checkout."""
import subprocess
import tarfile

import pytest

from sparrow_jax.launch import actions, cli
from sparrow_jax.launch.gcloud import TpuSpec

GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-c", "commit.gpgsign=false"]


@pytest.fixture
def checkout(tmp_path):
    """A git checkout with committed code, an ignored run dir and an untracked file."""
    repo = tmp_path / "repo"
    (repo / "sparrow_jax").mkdir(parents=True)
    (repo / "sparrow_jax" / "a.py").write_text("A = 1\n")
    (repo / "setup.py").write_text("# setup\n")
    (repo / ".gitignore").write_text("/runs/\n")
    subprocess.run([*GIT, "init", "-q", str(repo)], check=True)
    subprocess.run([*GIT, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-q", "-m", "c"], check=True)
    (repo / "runs" / "rl" / "checkpoints").mkdir(parents=True)
    (repo / "runs" / "rl" / "checkpoints" / "big.bin").write_bytes(b"x" * 1000)
    (repo / "notes.txt").write_text("untracked\n")
    return repo


def test_archive_holds_exactly_the_tracked_files_at_head(checkout, tmp_path):
    source = actions.LocalSource(str(checkout), archive=str(tmp_path / "src.tar.gz"))
    (checkout / "sparrow_jax" / "a.py").write_text("A = 2  # not committed\n")
    subprocess.run(actions.archive_command(source, TpuSpec(name="t", zone="z")), check=True)
    with tarfile.open(source.archive) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
        committed = tar.extractfile("sparrow_jax/a.py").read()
    assert names == [".gitignore", "setup.py", "sparrow_jax/a.py"]
    assert committed == b"A = 1\n"


def test_setup_warns_about_uncommitted_changes(checkout, capsys):
    assert actions.uncommitted_changes(str(checkout)) == []
    (checkout / "setup.py").write_text("# changed\n")
    code = cli.main(["setup", "--name", "t", "--zone", "z", "--project", "p",
                     "--src", str(checkout), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 0
    assert "setup ships HEAD; 1 tracked file(s) with uncommitted changes stay behind: setup.py" in err


def test_src_must_be_a_git_checkout(tmp_path, capsys):
    code = cli.main(["setup", "--name", "t", "--zone", "z", "--project", "p",
                     "--src", str(tmp_path), "--dry-run"])
    assert code == 2
    assert "is not the top of a git checkout" in capsys.readouterr().err
