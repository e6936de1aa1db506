"""Shell scripts run on the TPU workers (through `gcloud ... ssh --command`).

Remote paths are relative to the remote home directory and restricted to safe
characters, so they never need quoting and `$HOME` expands in them; user values
(config, workdir, overrides, repository URL) are shell-quoted. The scripts assume
bash, the login shell on TPU VM images (`set -o pipefail`).
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from typing import Sequence

from sparrow_jax.launch.gcloud import LaunchError

_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")


@dataclasses.dataclass(frozen=True)
class RemoteLayout:
    """Where things live on every worker, relative to the remote home."""

    code_dir: str = "sparrow_jax"
    venv_dir: str = "sparrow_venv"
    log_file: str = "sparrow_run.log"
    archive: str = "sparrow_jax-src.tar.gz"
    python: str = "python3.11"  # setup.py needs >= 3.11; installed with apt if missing
    data_dir: str = "sparrow_data"  # a job's `data` URL is synced here

    def __post_init__(self):
        for field in ("code_dir", "venv_dir", "log_file", "archive", "python", "data_dir"):
            value = getattr(self, field)
            if not _SAFE_PATH_RE.match(value) or ".." in value.split("/"):
                raise LaunchError(
                    f"remote {field} {value!r}: use a plain path relative to the remote home "
                    f"(letters, digits, _ . / -)")

    def home(self, path: str) -> str:
        return f"$HOME/{path}"


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """One `sparrow train` invocation, identical on every worker.

    `data`: a gs:// data dir (toy world, converted dataset, tokenizer) that every worker
    syncs to its disk before training and passes as `data.dir`; a recreated VM syncs it
    again, so babysat runs need nothing else. `compilation_cache`: JAX's persistent
    compilation cache directory (`JAX_COMPILATION_CACHE_DIR`), e.g. on GCS so a relaunch
    after preemption loads the compiled steps instead of compiling them again.
    """

    config: str
    workdir: str
    overrides: tuple[str, ...] = ()
    data: str = ""
    compilation_cache: str = ""

    def __post_init__(self):
        if self.data and not self.data.startswith("gs://"):
            raise LaunchError(f"--data {self.data!r}: give a gs:// URL (upload a local data dir "
                              f"with `gcloud storage rsync -r DIR gs://BUCKET/PATH`)")
        if self.data and any(o.startswith("--config.data.dir=") for o in self.overrides):
            raise LaunchError("--data sets data.dir on the workers: drop --config.data.dir")

    def argv(self) -> list[str]:
        return ["train", "--config", self.config, "--workdir", self.workdir, *self.overrides]


def _install(layout: RemoteLayout) -> str:
    py, venv = layout.python, layout.home(layout.venv_dir)
    return (
        f"command -v {py} >/dev/null || "
        f"(sudo apt-get update -qq && sudo apt-get install -y -qq {py} {py}-venv); "
        f"[ -x {venv}/bin/python ] || {py} -m venv {venv}; "
        f"{venv}/bin/pip install --quiet --upgrade pip; "
        f"{venv}/bin/pip install --quiet -e \"{layout.home(layout.code_dir)}[tpu]\""
    )


def setup_from_archive(layout: RemoteLayout) -> str:
    """Unpack the copied source archive into a clean code dir, then install."""
    code = layout.home(layout.code_dir)
    return (f"set -e; rm -rf {code}; mkdir -p {code}; "
            f"tar -xzf {layout.home(layout.archive)} -C {code}; " + _install(layout))


def setup_from_git(layout: RemoteLayout, repo: str, ref: str) -> str:
    """Clone once, then fetch `ref` (branch, tag or commit) and check it out; install."""
    code = layout.home(layout.code_dir)
    return (f"set -e; [ -d {code}/.git ] || git clone --quiet {shlex.quote(repo)} {code}; "
            f"git -C {code} fetch --quiet origin {shlex.quote(ref)}; "
            f"git -C {code} checkout --quiet --force FETCH_HEAD; " + _install(layout))


def train_command(layout: RemoteLayout, job: TrainJob) -> str:
    """`sparrow train` from the code dir; output also appended to the remote log file.

    With `job.data`, the data dir is synced first (`gcloud storage rsync` copies only what
    changed). The exit status is train's (pipefail), so a caller can tell failure from
    success; a failed sync stops the command with gcloud's status.
    """
    sparrow = f"{layout.home(layout.venv_dir)}/bin/sparrow"
    args = " ".join(shlex.quote(a) for a in job.argv())
    sync = ""
    if job.data:  # layout paths are safe unquoted, so $HOME expands
        data = layout.home(layout.data_dir)
        sync = f"mkdir -p {data} && gcloud storage rsync -r {shlex.quote(job.data)} {data} && "
        args += f" --config.data.dir={data}"
    env = "PYTHONUNBUFFERED=1"
    if job.compilation_cache:
        env += f" JAX_COMPILATION_CACHE_DIR={shlex.quote(job.compilation_cache)}"
    return (f"cd {layout.home(layout.code_dir)} && set -o pipefail && {sync}"
            f"{env} {sparrow} {args} 2>&1 | tee -a {layout.home(layout.log_file)}")


def tail_log(layout: RemoteLayout, lines: int = 100, follow: bool = False) -> str:
    flag = " -F" if follow else ""
    return f"tail -n {int(lines)}{flag} {layout.home(layout.log_file)}"


def shell_join(argv: Sequence[str]) -> str:
    return shlex.join(argv)
