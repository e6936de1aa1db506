"""Keep one training job running through preemptions.

Loop: make sure the TPU is READY (wait while it is being provisioned; if it was
preempted, suspended or deleted, recreate it and set it up again), run the job on
all workers, and look at how it ended:

* exit 0                                      -> done;
* TPU no longer READY after the job ended     -> preempted: recreate, set up, rerun;
* TPU READY and exit code in retry_exit_codes -> transient (ssh dropped, SIGTERM/SIGKILL
  on the workers): rerun;
* TPU READY and any other exit code           -> a real failure: stop with that code.

The rerun is the same `sparrow train` command with the same workdir, so training
resumes from its latest checkpoint. Retries are bounded and spaced by exponential
backoff. Time, sleeping and printing are injected so tests run instantly.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from sparrow_jax.launch import actions, gcloud, remote
from sparrow_jax.launch.actions import TpuState
from sparrow_jax.launch.gcloud import TpuSpec
from sparrow_jax.launch.runner import Runner

# 255: ssh lost the connection (VM went away); 137/143: killed / terminated.
DEFAULT_RETRY_EXIT_CODES = frozenset({255, 137, 143})


@dataclasses.dataclass(frozen=True)
class BabysitPolicy:
    max_retries: int = 10
    backoff_seconds: float = 60.0
    backoff_factor: float = 2.0
    max_backoff_seconds: float = 1800.0
    poll_seconds: float = 60.0
    provision_timeout_seconds: float = 6 * 3600.0
    retry_exit_codes: frozenset = DEFAULT_RETRY_EXIT_CODES
    setup_first: bool = False  # run setup before the first attempt even if the TPU exists

    def backoff(self, retry: int) -> float:
        """Delay before retry number `retry` (1-based)."""
        return min(self.max_backoff_seconds,
                   self.backoff_seconds * self.backoff_factor ** (retry - 1))


@dataclasses.dataclass
class Babysitter:
    spec: TpuSpec
    runner: Runner
    job: remote.TrainJob
    source: actions.GitSource | actions.LocalSource
    layout: remote.RemoteLayout = dataclasses.field(default_factory=remote.RemoteLayout)
    policy: BabysitPolicy = dataclasses.field(default_factory=BabysitPolicy)
    log_path: str | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    say: Callable[[str], None] = actions.stderr_say

    def _settle(self) -> TpuState:
        return actions.wait_while_pending(
            self.spec, self.runner, poll_seconds=self.policy.poll_seconds,
            timeout_seconds=self.policy.provision_timeout_seconds,
            sleep=self.sleep, clock=self.clock, say=self.say)

    def provision(self, state: TpuState) -> int:
        """Delete what is left (unless missing), create, wait until READY, set up."""
        if state is not TpuState.MISSING:
            self.say(f"{self.spec.name}: deleting the {state.value} TPU")
            actions.delete(self.spec, self.runner)
        self.say(f"{self.spec.name}: creating {self.spec.accelerator_type}")
        code = actions.create(self.spec, self.runner, wait=False)
        if code != 0:
            return code
        if self._settle() is not TpuState.READY:
            return 1
        self.say(f"{self.spec.name}: setting up the workers")
        return actions.setup(self.spec, self.runner, self.source, self.layout)

    def _prepare(self, first: bool) -> int:
        state = self._settle()
        if state is TpuState.READY:
            if first and self.policy.setup_first:
                return actions.setup(self.spec, self.runner, self.source, self.layout)
            return 0
        if state is TpuState.PENDING:
            self.say(f"{self.spec.name}: still pending after the provisioning timeout")
            return 1
        return self.provision(state)

    def run(self) -> int:
        """Babysit until success, a real failure, or max_retries; return the exit code."""
        retries = 0
        first = True
        while True:
            code = self._prepare(first)
            first = False
            if code == 0:
                self.say(f"{self.spec.name}: running (attempt {retries + 1})")
                code = actions.run(self.spec, self.runner, self.job, self.layout, self.log_path)
                if code == 0:
                    self.say(f"{self.spec.name}: job finished")
                    return 0
                state = actions.read_state(self.spec, self.runner)
                if state is TpuState.READY and code not in self.policy.retry_exit_codes:
                    self.say(f"{self.spec.name}: job failed with exit code {code} on a healthy "
                             f"TPU; not retrying")
                    return code
                self.say(f"{self.spec.name}: job ended with exit code {code}, TPU {state.value}")
            else:
                self.say(f"{self.spec.name}: provisioning failed (exit code {code})")
            retries += 1
            if retries > self.policy.max_retries:
                self.say(f"{self.spec.name}: giving up after {self.policy.max_retries} retries")
                return code or 1
            delay = self.policy.backoff(retries)
            self.say(f"{self.spec.name}: retry {retries}/{self.policy.max_retries} "
                     f"in {delay:.0f}s")
            self.sleep(delay)


def plan(spec: TpuSpec, job: remote.TrainJob, source, layout: remote.RemoteLayout) -> list[str]:
    """The babysitter's command lines, for --dry-run (comments start with '#')."""
    from sparrow_jax.launch.runner import format_command
    lines = ["# each attempt: read the TPU state, then run the job on all workers",
             format_command(gcloud.describe_state(spec)),
             format_command(actions.run_command(spec, job, layout)),
             "# after a preemption (state not READY/ACTIVE): delete, create, wait, set up, rerun",
             format_command(gcloud.delete(spec)),
             format_command(gcloud.create(spec))]
    if spec.queued:
        lines.append(format_command(gcloud.describe_state(spec)))
    lines += [format_command(c) for c in actions.setup_commands(spec, source, layout)]
    lines.append(format_command(actions.run_command(spec, job, layout)))
    return lines
