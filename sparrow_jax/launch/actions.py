"""The launcher's actions: create, setup, run, logs, delete, and reading TPU state.

Each action takes a TpuSpec and a runner explicitly (no module state) and returns
an exit code. Command lines come from gcloud.py, remote scripts from remote.py.
"""
from __future__ import annotations

import dataclasses
import enum
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

from sparrow_jax.launch import gcloud, remote
from sparrow_jax.launch.gcloud import TpuSpec
from sparrow_jax.launch.runner import Runner


class TpuState(enum.Enum):
    READY = "ready"        # VM READY / queued resource ACTIVE: ready to run jobs
    PENDING = "pending"    # being created, provisioned, repaired or deleted: wait
    LOST = "lost"          # preempted, suspended, stopped or failed: recreate
    MISSING = "missing"    # does not exist (describe failed): create


_VM_STATES = {
    "READY": TpuState.READY,
    **{s: TpuState.PENDING for s in ("CREATING", "STARTING", "RESTARTING", "REIMAGING",
                                     "REPAIRING", "UNHIDING", "DELETING")},
    **{s: TpuState.LOST for s in ("PREEMPTED", "TERMINATED", "STOPPED", "STOPPING",
                                  "HIDING", "HIDDEN")},
}
_QUEUED_STATES = {
    "ACTIVE": TpuState.READY,
    **{s: TpuState.PENDING for s in ("CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES",
                                     "PROVISIONING", "DELETING")},
    **{s: TpuState.LOST for s in ("SUSPENDING", "SUSPENDED", "FAILED")},
}


def classify_state(raw: str, queued: bool) -> TpuState:
    """Map a gcloud state string to what the babysitter should do about it."""
    table = _QUEUED_STATES if queued else _VM_STATES
    return table.get(raw.strip().upper(), TpuState.LOST)


def read_state(spec: TpuSpec, runner: Runner) -> TpuState:
    result = runner.run(gcloud.describe_state(spec), capture=True)
    if result.returncode != 0 or not result.output.strip():
        return TpuState.MISSING
    return classify_state(result.output, spec.queued)


def wait_while_pending(spec: TpuSpec, runner: Runner, *, poll_seconds: float,
                       timeout_seconds: float, sleep: Callable[[float], None] = time.sleep,
                       clock: Callable[[], float] = time.monotonic,
                       say: Callable[[str], None] | None = None) -> TpuState:
    """Poll the state until it is not PENDING (or the timeout passes; then PENDING)."""
    deadline = clock() + timeout_seconds
    while True:
        state = read_state(spec, runner)
        if state is not TpuState.PENDING or clock() >= deadline:
            return state
        if say:
            say(f"{spec.name}: {state.value}; checking again in {poll_seconds:.0f}s")
        sleep(poll_seconds)


# --- the actions ---------------------------------------------------------------

def create(spec: TpuSpec, runner: Runner, *, wait: bool = True, poll_seconds: float = 60,
           timeout_seconds: float = 6 * 3600, sleep=time.sleep, clock=time.monotonic,
           say=None) -> int:
    """Create the TPU VM (or queue the request); with `wait`, until it is READY."""
    code = runner.run(gcloud.create(spec)).returncode
    if code != 0 or not wait or not spec.queued:
        return code
    state = wait_while_pending(spec, runner, poll_seconds=poll_seconds,
                               timeout_seconds=timeout_seconds, sleep=sleep, clock=clock, say=say)
    return 0 if state is TpuState.READY else 1


def delete(spec: TpuSpec, runner: Runner) -> int:
    return runner.run(gcloud.delete(spec)).returncode


@dataclasses.dataclass(frozen=True)
class GitSource:
    """Every worker clones `repo` and checks out `ref`."""

    repo: str
    ref: str = "main"


@dataclasses.dataclass(frozen=True)
class LocalSource:
    """What git tracks at this checkout's HEAD is archived and copied to every worker."""

    path: str
    archive: str = ""  # local archive file; default: in the temp dir, named after the TPU

    def archive_path(self, spec: TpuSpec) -> str:
        return self.archive or os.path.join(tempfile.gettempdir(),
                                            f"sparrow_jax-{spec.name}.tar.gz")


def archive_command(source: LocalSource, spec: TpuSpec) -> list[str]:
    """`git archive` of HEAD: exactly the files git tracks, as committed. Runs, data dirs,
    caches, venvs and logs lying in the checkout stay behind (a tar of the directory
    shipped `runs/` too), and the workers run a commit that can be named."""
    return ["git", "-C", source.path, "archive", "--format=tar.gz", "-o",
            source.archive_path(spec), "HEAD"]


def uncommitted_changes(path: str) -> list[str]:
    """Tracked files of the checkout at `path` that differ from HEAD (`git status` lines):
    what `setup` will NOT ship. Read-only."""
    proc = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                          capture_output=True, text=True, check=False)
    return [line for line in proc.stdout.splitlines() if line.strip()]


def setup_commands(spec: TpuSpec, source: GitSource | LocalSource,
                   layout: remote.RemoteLayout) -> list[list[str]]:
    """The command lines that put the code and a venv with `.[tpu]` on every worker."""
    if isinstance(source, GitSource):
        return [gcloud.ssh(spec, remote.setup_from_git(layout, source.repo, source.ref))]
    return [archive_command(source, spec),
            gcloud.scp_to_workers(spec, source.archive_path(spec), layout.archive),
            gcloud.ssh(spec, remote.setup_from_archive(layout))]


def setup(spec: TpuSpec, runner: Runner, source: GitSource | LocalSource,
          layout: remote.RemoteLayout) -> int:
    if isinstance(source, LocalSource):
        changed = uncommitted_changes(source.path)
        if changed:
            stderr_say(f"warning: setup ships HEAD; {len(changed)} tracked file(s) with "
                       f"uncommitted changes stay behind: "
                       + ", ".join(line[3:] for line in changed[:5])
                       + (" ..." if len(changed) > 5 else "") + " (commit them first)")
    for argv in setup_commands(spec, source, layout):
        code = runner.run(argv).returncode
        if code != 0:
            return code
    return 0


def run_command(spec: TpuSpec, job: remote.TrainJob, layout: remote.RemoteLayout) -> list[str]:
    """The same `sparrow train` on all workers at once; multi-host init is automatic."""
    return gcloud.ssh(spec, remote.train_command(layout, job), worker="all")


def run(spec: TpuSpec, runner: Runner, job: remote.TrainJob, layout: remote.RemoteLayout,
        log_path: str | None) -> int:
    """Run the job attached: output streamed here and appended to `log_path`."""
    return runner.run(run_command(spec, job, layout), log_path=log_path).returncode


def logs(spec: TpuSpec, runner: Runner, layout: remote.RemoteLayout, *, worker: str = "0",
         lines: int = 100, follow: bool = False) -> int:
    """Show the remote run log of one worker (all workers log the same job)."""
    return runner.run(gcloud.ssh(spec, remote.tail_log(layout, lines, follow),
                                 worker=worker)).returncode


def default_log_path(spec: TpuSpec) -> str:
    return os.path.join("tpu_logs", f"{spec.name}.log")


def stderr_say(message: str) -> None:
    print(f"[launch] {message}", file=sys.stderr, flush=True)
