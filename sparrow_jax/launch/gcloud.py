"""The one place where `gcloud compute tpus ...` command lines are built.

Every builder is a pure function returning an argv list; the runner (runner.py)
executes it or, in --dry-run, prints it shell-quoted. Syntax follows the current
gcloud reference for `compute tpus tpu-vm {create,delete,describe,ssh,scp}` and
`compute tpus queued-resources {create,delete,describe}`.
"""
from __future__ import annotations

import dataclasses
import re

GCLOUD = "gcloud"
TPU_VM = (GCLOUD, "compute", "tpus", "tpu-vm")
QUEUED = (GCLOUD, "compute", "tpus", "queued-resources")

# Default software ("runtime") version per TPU generation, from the Cloud TPU
# "TPU software versions" page (JAX/PyTorch rows).
DEFAULT_RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}

_ACCELERATOR_RE = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)$")
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class LaunchError(ValueError):
    """A launch request that cannot work (bad TPU type, name, missing zone...)."""


def parse_accelerator_type(accelerator_type: str) -> tuple[str, int]:
    """'v5p-128' -> ('v5p', 128). Raises LaunchError for an unknown type."""
    match = _ACCELERATOR_RE.match(accelerator_type)
    if not match:
        raise LaunchError(
            f"unknown TPU type {accelerator_type!r}: expected e.g. v4-256, v5p-128, "
            f"v5litepod-16, v6e-64")
    return match.group(1), int(match.group(2))


def is_multi_host(accelerator_type: str) -> bool:
    """More than one TPU VM worker: every generation has at most 8 cores/chips per host."""
    return parse_accelerator_type(accelerator_type)[1] > 8


def default_runtime_version(accelerator_type: str) -> str:
    return DEFAULT_RUNTIME_VERSIONS[parse_accelerator_type(accelerator_type)[0]]


@dataclasses.dataclass(frozen=True)
class TpuSpec:
    """What to create and where. `project=None` leaves it to gcloud's own config."""

    name: str
    zone: str
    accelerator_type: str | None = None  # needed to create; optional for the other actions
    project: str | None = None
    runtime_version: str | None = None  # None: DEFAULT_RUNTIME_VERSIONS for the type
    spot: bool = False
    queued: bool = False  # create through a queued resource

    def __post_init__(self):
        if not _NAME_RE.match(self.name):
            raise LaunchError(
                f"TPU name {self.name!r}: use lowercase letters, digits and dashes, "
                f"starting with a letter")
        if not self.zone:
            raise LaunchError("no zone: pass --zone or set CLOUDSDK_COMPUTE_ZONE")
        if self.accelerator_type is not None:
            parse_accelerator_type(self.accelerator_type)

    @property
    def version(self) -> str:
        if self.runtime_version:
            return self.runtime_version
        if self.accelerator_type is None:
            raise LaunchError("no TPU type: pass --type (e.g. v5p-128)")
        return default_runtime_version(self.accelerator_type)

    def require_type(self) -> str:
        if self.accelerator_type is None:
            raise LaunchError("no TPU type: pass --type (e.g. v5p-128)")
        return self.accelerator_type

    @property
    def queued_resource_id(self) -> str:
        return f"{self.name}-qr"


def _location(spec: TpuSpec) -> list[str]:
    flags = [f"--zone={spec.zone}"]
    if spec.project:
        flags.append(f"--project={spec.project}")
    return flags


# --- creation and deletion ---------------------------------------------------

def create_vm(spec: TpuSpec) -> list[str]:
    """`tpu-vm create`: returns once the VM exists (or fails)."""
    argv = [*TPU_VM, "create", spec.name, *_location(spec),
            f"--accelerator-type={spec.require_type()}", f"--version={spec.version}"]
    if spec.spot:
        argv.append("--spot")
    return argv


def create_queued(spec: TpuSpec) -> list[str]:
    """`queued-resources create`: returns once the request is accepted, not provisioned."""
    argv = [*QUEUED, "create", spec.queued_resource_id, f"--node-id={spec.name}",
            *_location(spec), f"--accelerator-type={spec.require_type()}",
            f"--runtime-version={spec.version}"]
    if spec.spot:
        argv.append("--spot")
    return argv


def create(spec: TpuSpec) -> list[str]:
    return create_queued(spec) if spec.queued else create_vm(spec)


def delete_vm(spec: TpuSpec) -> list[str]:
    return [*TPU_VM, "delete", spec.name, *_location(spec), "--quiet"]


def delete_queued(spec: TpuSpec) -> list[str]:
    """`--force` deletes the queued resource's nodes first."""
    return [*QUEUED, "delete", spec.queued_resource_id, *_location(spec), "--force", "--quiet"]


def delete(spec: TpuSpec) -> list[str]:
    return delete_queued(spec) if spec.queued else delete_vm(spec)


# --- state -------------------------------------------------------------------

def describe_vm_state(spec: TpuSpec) -> list[str]:
    """Prints the node state: READY, CREATING, PREEMPTED, STOPPED, TERMINATED, ..."""
    return [*TPU_VM, "describe", spec.name, *_location(spec), "--format=value(state)"]


def describe_queued_state(spec: TpuSpec) -> list[str]:
    """Prints the request state: WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDED, ..."""
    return [*QUEUED, "describe", spec.queued_resource_id, *_location(spec),
            "--format=value(state.state)"]


def describe_state(spec: TpuSpec) -> list[str]:
    return describe_queued_state(spec) if spec.queued else describe_vm_state(spec)


# --- on the workers ----------------------------------------------------------

def ssh(spec: TpuSpec, command: str, worker: str = "all") -> list[str]:
    """Run a shell command on `worker` ('all' = every worker at once, or an index)."""
    return [*TPU_VM, "ssh", spec.name, *_location(spec), f"--worker={worker}",
            "--command", command]


def scp_to_workers(spec: TpuSpec, local_path: str, remote_path: str,
                   worker: str = "all") -> list[str]:
    """Copy one local file to `remote_path` (relative to the remote home) on every worker."""
    return [*TPU_VM, "scp", local_path, f"{spec.name}:{remote_path}", *_location(spec),
            f"--worker={worker}"]
