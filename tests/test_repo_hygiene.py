"""The repository holds source, not build products: no wheel or archive is tracked, and
.gitignore keeps new ones out (a pyflakes wheel was committed once)."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVES = (".whl", ".tar", ".tar.gz", ".tgz", ".zip", ".egg", ".7z", ".tar.bz2", ".tar.xz")

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")),
    reason="needs a git checkout")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def test_no_archive_is_tracked():
    tracked = [p for p in _git("ls-files").splitlines() if p.endswith(ARCHIVES)]
    assert tracked == []


@pytest.mark.parametrize("name", ["pyflakes-4.1.0-py2.py3-none-any.whl", "dist/x-1.0.tar.gz",
                                  "data/dump.zip", "sub/dir/a.tgz"])
def test_gitignore_keeps_archives_out(name):
    # check-ignore --no-index judges the path by the ignore rules alone (exit 0 = ignored).
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", name], cwd=ROOT)
    assert result.returncode == 0, f"{name} would not be ignored by .gitignore"
