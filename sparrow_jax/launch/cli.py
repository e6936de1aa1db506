"""`python launch/tpu.py <action> ...`: create, setup, run, logs, delete, babysit.

    create  --name N --zone Z [--project P] --type v5p-128 [--runtime-version V] [--spot] [--queued]
    setup   --name N --zone Z [--repo URL [--ref REF] | --src DIR]
    run     --name N --zone Z --config experiments/X.py[:variant] --workdir gs://... [--config.a.b=v ...]
    logs    --name N --zone Z [--worker 0] [--lines 100] [--follow]
    delete  --name N --zone Z [--queued]
    babysit (create + setup + run flags) [--max-retries 10] [--backoff 60] ...

Every action takes --dry-run: print the command lines (one per line, shell-quoted)
instead of running them. --project defaults to $CLOUDSDK_CORE_PROJECT or
$GOOGLE_CLOUD_PROJECT (else gcloud's configured project); --zone to
$CLOUDSDK_COMPUTE_ZONE. run and babysit first load and validate the config here
(`preflight`; needs ml_collections): a bad key or value exits 2 before any command.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from sparrow_jax.launch import actions, babysit, gcloud, preflight, remote
from sparrow_jax.launch.gcloud import LaunchError, TpuSpec
from sparrow_jax.launch.runner import DryRunRunner, Runner, SubprocessRunner

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_tpu_arguments(parser: argparse.ArgumentParser, *, name_required: bool = True) -> None:
    """--name --zone --project --queued --dry-run (shared by every action and `sparrow sweep`)."""
    parser.add_argument("--name", required=name_required, help="TPU VM name, e.g. sparrow-v5p")
    parser.add_argument("--zone", default=os.environ.get("CLOUDSDK_COMPUTE_ZONE"),
                        help="zone (default: $CLOUDSDK_COMPUTE_ZONE)")
    parser.add_argument("--project", default=os.environ.get("CLOUDSDK_CORE_PROJECT")
                        or os.environ.get("GOOGLE_CLOUD_PROJECT"),
                        help="GCP project (default: $CLOUDSDK_CORE_PROJECT, $GOOGLE_CLOUD_PROJECT, "
                             "else gcloud's configured project)")
    parser.add_argument("--queued", action="store_true",
                        help="the TPU is (to be) created through a queued resource NAME-qr")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the command lines instead of running them")


def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote-dir", default="sparrow_jax",
                        help="code directory on the workers, relative to the remote home")
    parser.add_argument("--venv", default="sparrow_venv",
                        help="virtualenv on the workers, relative to the remote home")
    parser.add_argument("--python", default="python3.11", help="python used to create the venv")


def _add_create(parser):
    parser.add_argument("--type", dest="accelerator_type", required=True,
                        help="accelerator type, e.g. v4-256, v5p-128")
    parser.add_argument("--runtime-version", default=None,
                        help="TPU software version (default per generation, e.g. v2-alpha-tpuv5 "
                             "for v5p, tpu-ubuntu2204-base for v4)")
    parser.add_argument("--spot", action="store_true", help="Spot capacity (can be preempted)")


def _add_setup(parser):
    parser.add_argument("--repo", default=None,
                        help="git URL every worker clones; default: copy this checkout (--src)")
    parser.add_argument("--ref", default="main", help="branch, tag or commit to check out (--repo)")
    parser.add_argument("--src", default=REPO_ROOT,
                        help="local git checkout whose HEAD (tracked files only) is copied "
                             "(without --repo)")


def _add_run(parser):
    parser.add_argument("--config", required=True, help="experiment file[:variant], repo-relative")
    parser.add_argument("--workdir", required=True,
                        help="run directory; a gs:// path on multi-host TPUs")
    parser.add_argument("--data", default="",
                        help="gs:// data dir synced to every worker before training and passed "
                             "as data.dir (also after a babysat VM is recreated)")
    parser.add_argument("--compilation-cache", default="", metavar="DIR",
                        help="JAX persistent compilation cache for the workers, e.g. "
                             "gs://BUCKET/jax_cache: relaunches load compiled steps")
    parser.add_argument("--log-file", default=None,
                        help="local copy of the streamed output (default: tpu_logs/NAME.log)")
    parser.add_argument("--allow-local-workdir", action="store_true",
                        help="allow a non-gs:// workdir on a multi-host TPU")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/tpu.py", description="Run sparrow_jax on Cloud TPU VMs. "
        "Config overrides for run/babysit: --config.a.b=value.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("create", help="create a TPU VM (or queue the request)")
    add_tpu_arguments(p)
    _add_create(p)
    p.add_argument("--no-wait", action="store_true",
                   help="with --queued, return once the request is accepted")

    p = sub.add_parser("setup", help="put the code and a venv with .[tpu] on every worker")
    add_tpu_arguments(p)
    add_layout_arguments(p)
    _add_setup(p)

    p = sub.add_parser("run", help="run `sparrow train` on all workers, streaming the logs")
    add_tpu_arguments(p)
    add_layout_arguments(p)
    _add_run(p)
    p.add_argument("--type", dest="accelerator_type", default=None,
                   help="accelerator type, to check the workdir is gs:// on multi-host TPUs")

    p = sub.add_parser("logs", help="show the run log of one worker")
    add_tpu_arguments(p)
    add_layout_arguments(p)
    p.add_argument("--worker", default="0", help="worker index, or 'all'")
    p.add_argument("--lines", type=int, default=100)
    p.add_argument("--follow", action="store_true", help="keep following the log")

    p = sub.add_parser("delete", help="delete the TPU VM (or queued resource)")
    add_tpu_arguments(p)

    p = sub.add_parser("babysit", help="run; on preemption recreate + setup + rerun, with retries")
    add_tpu_arguments(p)
    add_layout_arguments(p)
    _add_create(p)
    _add_setup(p)
    _add_run(p)
    p.add_argument("--max-retries", type=int, default=10)
    p.add_argument("--backoff", type=float, default=60.0, help="first retry delay, seconds")
    p.add_argument("--max-backoff", type=float, default=1800.0, help="longest retry delay")
    p.add_argument("--poll", type=float, default=60.0, help="state polling interval, seconds")
    p.add_argument("--provision-timeout", type=float, default=6 * 3600.0,
                   help="how long to wait for a TPU to become READY, seconds")
    p.add_argument("--setup-first", action="store_true",
                   help="run setup before the first attempt even if the TPU already exists")
    return parser


def spec_from_args(args) -> TpuSpec:
    return TpuSpec(name=args.name, zone=args.zone, project=args.project,
                   accelerator_type=getattr(args, "accelerator_type", None),
                   runtime_version=getattr(args, "runtime_version", None),
                   spot=getattr(args, "spot", False), queued=args.queued)


def layout_from_args(args) -> remote.RemoteLayout:
    return remote.RemoteLayout(code_dir=args.remote_dir, venv_dir=args.venv, python=args.python)


def source_from_args(args) -> actions.GitSource | actions.LocalSource:
    if args.repo:
        return actions.GitSource(args.repo, args.ref)
    src = os.path.abspath(args.src)
    if not os.path.exists(os.path.join(src, ".git")):
        raise LaunchError(f"--src {args.src!r} is not the top of a git checkout: setup ships "
                          f"what git tracks at its HEAD (or pass --repo URL --ref REF)")
    return actions.LocalSource(src)


def check_workdir(workdir: str, accelerator_type: str | None, allow_local: bool) -> None:
    """Multi-host jobs share checkpoints and metrics: the workdir must be on GCS."""
    if workdir.startswith("gs://") or allow_local:
        return
    if accelerator_type is not None and gcloud.is_multi_host(accelerator_type):
        raise LaunchError(
            f"--workdir {workdir!r} is not a gs:// path, but {accelerator_type} has several "
            f"workers that must share one workdir (pass --allow-local-workdir to override)")
    print(f"[launch] warning: --workdir {workdir!r} is not a gs:// path; each worker writes "
          f"its own copy", file=sys.stderr)


def _job(args, overrides: Sequence[str]) -> remote.TrainJob:
    """The job of `run` / `babysit`, its workdir and config checked here before any command."""
    check_workdir(args.workdir, args.accelerator_type, args.allow_local_workdir)
    job = remote.TrainJob(args.config, args.workdir, tuple(overrides), data=args.data,
                          compilation_cache=args.compilation_cache)
    preflight.check_train_config(job, REPO_ROOT)
    return job


def dispatch(args, overrides: Sequence[str], runner: Runner) -> int:
    """Run one parsed action with the given runner; returns the exit code."""
    spec = spec_from_args(args)
    if overrides and args.action not in ("run", "babysit"):
        raise LaunchError(f"{args.action} takes no --config.* overrides")
    if args.action == "create":
        return actions.create(spec, runner, wait=not (args.no_wait or args.dry_run),
                              say=actions.stderr_say)
    if args.action == "delete":
        return actions.delete(spec, runner)
    layout = layout_from_args(args)
    if args.action == "setup":
        return actions.setup(spec, runner, source_from_args(args), layout)
    if args.action == "logs":
        return actions.logs(spec, runner, layout, worker=args.worker, lines=args.lines,
                            follow=args.follow)
    job = _job(args, overrides)
    log_path = None if args.dry_run else (args.log_file or actions.default_log_path(spec))
    if args.action == "run":
        return actions.run(spec, runner, job, layout, log_path)
    source = source_from_args(args)
    if args.dry_run:
        for line in babysit.plan(spec, job, source, layout):
            print(line)
        return 0
    policy = babysit.BabysitPolicy(
        max_retries=args.max_retries, backoff_seconds=args.backoff,
        max_backoff_seconds=args.max_backoff, poll_seconds=args.poll,
        provision_timeout_seconds=args.provision_timeout, setup_first=args.setup_first)
    return babysit.Babysitter(spec, runner, job, source, layout, policy, log_path).run()


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(other args, --config.* overrides); like the `sparrow` command."""
    overrides = [a for a in argv if a.startswith("--config.")]
    return [a for a in argv if not a.startswith("--config.")], overrides


def main(argv: Sequence[str] | None = None, runner: Runner | None = None) -> int:
    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    if runner is None:
        runner = DryRunRunner() if args.dry_run else SubprocessRunner()
    try:
        return dispatch(args, overrides, runner)
    except LaunchError as err:
        print(f"launch/tpu.py {args.action}: {err}", file=sys.stderr)
        return 2
