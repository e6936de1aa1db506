"""The babysitter against a fake runner: preemption -> recreate, setup, same rerun -> stop."""
import pytest

from sparrow_jax.launch import actions, gcloud, remote
from sparrow_jax.launch.babysit import Babysitter, BabysitPolicy
from sparrow_jax.launch.gcloud import TpuSpec
from sparrow_jax.launch.runner import Result

JOB = remote.TrainJob("experiments/sparrow_70b.py:v5p_128", "gs://example-bucket/run",
                      ("--config.train.learning_rate=1e-06",))
SOURCE = actions.GitSource("https://github.com/example/sparrow_jax.git", "main")
LAYOUT = remote.RemoteLayout()


class FakeRunner:
    """Answers `describe` from a list of states and job runs from a list of exit codes.

    Records every command as a short label, e.g. 'describe', 'run', 'create'."""

    def __init__(self, spec, states, run_codes, create_code=0):
        self.spec, self.states, self.run_codes = spec, list(states), list(run_codes)
        self.create_code = create_code
        self.calls, self.run_argvs, self.log_paths = [], [], []

    def label(self, argv):
        if argv == gcloud.describe_state(self.spec):
            return "describe"
        if argv == actions.run_command(self.spec, JOB, LAYOUT):
            return "run"
        if argv == gcloud.create(self.spec):
            return "create"
        if argv == gcloud.delete(self.spec):
            return "delete"
        if argv in actions.setup_commands(self.spec, SOURCE, LAYOUT):
            return "setup"
        raise AssertionError(f"unexpected command {argv}")

    def run(self, argv, *, capture=False, log_path=None):
        label = self.label(list(argv))
        self.calls.append(label)
        if label == "describe":
            state = self.states.pop(0)
            return Result(1, "") if state is None else Result(0, state + "\n")
        if label == "run":
            self.run_argvs.append(list(argv))
            self.log_paths.append(log_path)
            return Result(self.run_codes.pop(0))
        if label == "create":
            return Result(self.create_code)
        return Result(0)


def babysitter(spec, runner, **policy):
    sleeps = []
    sitter = Babysitter(spec, runner, JOB, SOURCE, LAYOUT,
                        BabysitPolicy(**{"backoff_seconds": 10, "poll_seconds": 5, **policy}),
                        log_path="tpu_logs/x.log", sleep=sleeps.append, say=lambda m: None)
    return sitter, sleeps


def test_vm_preempted_once_then_success():
    spec = TpuSpec(name="sparrow-v5p", zone="us-east5-a", accelerator_type="v5p-128", spot=True)
    # READY before the run; run dies with ssh error 255; the VM is PREEMPTED;
    # after delete + create the VM is READY; setup; rerun succeeds.
    runner = FakeRunner(spec, states=["READY", "PREEMPTED", "PREEMPTED", "READY"],
                        run_codes=[255, 0])
    sitter, sleeps = babysitter(spec, runner)
    assert sitter.run() == 0
    assert runner.calls == ["describe", "run", "describe",       # attempt 1: preempted
                            "describe", "delete", "create", "describe", "setup",  # recreate
                            "run"]                                 # attempt 2: success
    assert runner.run_argvs[0] == runner.run_argvs[1]  # the very same command: resumes
    assert runner.log_paths == ["tpu_logs/x.log", "tpu_logs/x.log"]
    assert sleeps == [10]  # one backoff before the retry, no polling needed


def test_queued_resource_suspended_waits_for_provisioning():
    spec = TpuSpec(name="sparrow-v4", zone="us-central2-b", accelerator_type="v4-256",
                   spot=True, queued=True)
    runner = FakeRunner(spec, states=["ACTIVE", "SUSPENDED", "SUSPENDED",
                                      "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"],
                        run_codes=[143, 0])
    sitter, sleeps = babysitter(spec, runner)
    assert sitter.run() == 0
    assert runner.calls == ["describe", "run", "describe",
                            "describe", "delete", "create",
                            "describe", "describe", "describe", "setup", "run"]
    assert sleeps == [10, 5, 5]  # backoff, then two polls while provisioning


def test_missing_tpu_is_created_without_delete():
    spec = TpuSpec(name="sparrow-v5p", zone="us-east5-a", accelerator_type="v5p-128")
    runner = FakeRunner(spec, states=[None, "CREATING", "READY"], run_codes=[0])
    sitter, _ = babysitter(spec, runner)
    assert sitter.run() == 0
    assert runner.calls == ["describe", "create", "describe", "describe", "setup", "run"]


def test_real_failure_on_healthy_tpu_is_not_retried():
    spec = TpuSpec(name="sparrow-v5p", zone="us-east5-a", accelerator_type="v5p-128")
    runner = FakeRunner(spec, states=["READY", "READY"], run_codes=[1])
    sitter, sleeps = babysitter(spec, runner)
    assert sitter.run() == 1
    assert runner.calls == ["describe", "run", "describe"]
    assert sleeps == []


def test_retries_are_bounded_with_exponential_backoff():
    spec = TpuSpec(name="sparrow-v5p", zone="us-east5-a", accelerator_type="v5p-128")
    runner = FakeRunner(spec, states=["READY"] * 8, run_codes=[255] * 4)
    sitter, sleeps = babysitter(spec, runner, max_retries=3, max_backoff_seconds=30)
    assert sitter.run() == 255
    assert runner.calls.count("run") == 4
    assert sleeps == [10, 20, 30]


def test_failed_create_counts_as_a_retry():
    spec = TpuSpec(name="sparrow-v5p", zone="us-east5-a", accelerator_type="v5p-128", spot=True)
    runner = FakeRunner(spec, states=[None, None], run_codes=[], create_code=1)
    sitter, sleeps = babysitter(spec, runner, max_retries=1)
    assert sitter.run() == 1
    assert runner.calls == ["describe", "create", "describe", "create"]
    assert sleeps == [10]


@pytest.mark.parametrize("raw, queued, expected", [
    ("READY", False, actions.TpuState.READY),
    ("PREEMPTED", False, actions.TpuState.LOST),
    ("CREATING", False, actions.TpuState.PENDING),
    ("ACTIVE", True, actions.TpuState.READY),
    ("SUSPENDED", True, actions.TpuState.LOST),
    ("WAITING_FOR_RESOURCES", True, actions.TpuState.PENDING),
    ("FAILED", True, actions.TpuState.LOST),
])
def test_state_classification(raw, queued, expected):
    assert actions.classify_state(raw, queued) is expected
