"""`sparrow sweep`: expand an experiment's get_sweep() into runs.

    sparrow sweep --config experiments/X.py[:variant] --workdir ROOT
                  [--dry-run] [--local | --tpu NAME --zone Z [--project P]]
                  [--summarize [--metrics a,b] [--json]] [--member NAME ...] [--force]
                  [--config.a.b=v ...]          # applied to every member

Every member's config is loaded and checked before anything runs; a bad member
is an error naming the member and the key. Member i runs in ROOT/<name>, where
the name comes from its overrides (e.g. `learning_rate=0.001,n_frozen_layers=1`).

* no mode (or --dry-run): list each member's overrides, workdir and exact command;
* --local: run the members one after another as `python -m sparrow_jax train`
  subprocesses; on success write ROOT/<name>/DONE, and skip members that already
  have it (unless --force). A failed member does not stop the others; the exit
  code is 1 if any failed. ROOT must be a local directory;
* --tpu NAME: run the members one after another on an existing, set-up TPU VM
  (launch/tpu.py create + setup), on all workers, via the launch module. There is
  no DONE marker on GCS: a finished member rerun resumes from its last checkpoint;
* --summarize: one row per member from ROOT/<name>/report.json and the last
  record of metrics.jsonl (after running, if a mode is also given).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment file[:variant] with get_sweep()")
    parser.add_argument("--workdir", required=True, help="sweep root; member i runs in ROOT/<name>")
    parser.add_argument("--dry-run", action="store_true",
                        help="list members, workdirs and commands without running (the default "
                             "without --local/--tpu; with --tpu, the gcloud command lines)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run members here, one after another")
    mode.add_argument("--tpu", metavar="NAME", default=None,
                      help="run members one after another on this TPU VM")
    parser.add_argument("--summarize", action="store_true",
                        help="print a results table across members")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated summary columns (default: step + last-record metrics); "
                             "also SPLIT/KEY and report.DOTTED.KEY")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--member", action="append", default=[], metavar="NAME",
                        help="only this member (repeatable)")
    parser.add_argument("--force", action="store_true", help="--local: rerun members marked DONE")
    tpu = parser.add_argument_group("--tpu options")
    tpu.add_argument("--zone", default=os.environ.get("CLOUDSDK_COMPUTE_ZONE"))
    tpu.add_argument("--project", default=os.environ.get("CLOUDSDK_CORE_PROJECT")
                     or os.environ.get("GOOGLE_CLOUD_PROJECT"))
    tpu.add_argument("--type", dest="accelerator_type", default=None,
                     help="accelerator type, to check the workdir is gs:// on multi-host TPUs")
    tpu.add_argument("--remote-dir", default="sparrow_jax")
    tpu.add_argument("--venv", default="sparrow_venv")
    tpu.add_argument("--log-dir", default="tpu_logs", help="local copies of each member's output")
    tpu.add_argument("--data", default="",
                     help="gs:// data dir synced to every worker and passed as data.dir")
    tpu.add_argument("--compilation-cache", default="", metavar="DIR",
                     help="JAX persistent compilation cache shared by the members' runs")


def local_command(config: str, workdir: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "sparrow_jax", "train", "--config", config,
            "--workdir", workdir, *args]


class _TpuTarget:
    """The launch-module objects for `--tpu NAME` (imported only when used)."""

    def __init__(self, args, runner):
        from sparrow_jax.launch import actions, cli, remote
        from sparrow_jax.launch.gcloud import TpuSpec
        self.actions, self.remote, self.cli = actions, remote, cli
        self.spec = TpuSpec(name=args.tpu, zone=args.zone, project=args.project,
                            accelerator_type=args.accelerator_type)
        self.layout = remote.RemoteLayout(code_dir=args.remote_dir, venv_dir=args.venv)
        self.runner = runner
        self.log_dir = args.log_dir
        self.data, self.compilation_cache = args.data, args.compilation_cache

    def job(self, config, member, common):
        return self.remote.TrainJob(config, member.workdir, tuple(common) + tuple(member.args),
                                    data=self.data, compilation_cache=self.compilation_cache)

    def command(self, config, member, common) -> list[str]:
        return self.actions.run_command(self.spec, self.job(config, member, common), self.layout)

    def run(self, config, member, common) -> int:
        log = os.path.join(self.log_dir, self.spec.name, f"{member.name}.log")
        return self.actions.run(self.spec, self.runner, self.job(config, member, common),
                                self.layout, log)


def _print_plan(members, commands, as_json: bool) -> None:
    from sparrow_jax.launch.runner import format_command
    if as_json:
        print(json.dumps([{"index": m.index, "name": m.name, "overrides": m.overrides,
                           "workdir": m.workdir, "command": c} for m, c in zip(members, commands)],
                         indent=1))
        return
    print(f"{len(members)} sweep members")
    for m, command in zip(members, commands):
        print(f"[{m.index}] {m.name}")
        print(f"    overrides: {' '.join(m.args) or '(none)'}")
        print(f"    workdir:   {m.workdir}")
        print(f"    command:   {format_command(command)}")


def _run_local(config, members, common, force: bool) -> int:
    failed = []
    for m in members:
        done = os.path.join(m.workdir, "DONE")
        if os.path.exists(done) and not force:
            print(f"[{m.index}] {m.name}: DONE, skipping (--force to rerun)", flush=True)
            continue
        os.makedirs(m.workdir, exist_ok=True)
        with open(os.path.join(m.workdir, "sweep_member.json"), "w") as f:
            json.dump({"index": m.index, "name": m.name, "config": config,
                       "overrides": m.overrides, "common_overrides": list(common)}, f, indent=1)
        print(f"[{m.index}] {m.name}: running", flush=True)
        code = subprocess.run(local_command(config, m.workdir, [*common, *m.args])).returncode
        if code == 0:
            with open(done, "w") as f:
                f.write(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        else:
            print(f"[{m.index}] {m.name}: failed with exit code {code}", file=sys.stderr)
            failed.append(m.name)
    if failed:
        print(f"{len(failed)} of {len(members)} members failed: {', '.join(failed)}",
              file=sys.stderr)
    return 1 if failed else 0


def _run_tpu(target, config, members, common) -> int:
    failed = []
    for m in members:
        print(f"[{m.index}] {m.name}: running on {target.spec.name}", flush=True)
        code = target.run(config, m, common)
        if code != 0:
            print(f"[{m.index}] {m.name}: failed with exit code {code}", file=sys.stderr)
            failed.append(m.name)
    return 1 if failed else 0


def _summarize(members, args) -> None:
    from sparrow_jax import sweeps
    metrics = [c for c in (args.metrics or "").split(",") if c] or None
    rows = sweeps.summarize(members, metrics)
    print(json.dumps(rows, indent=1) if args.json else sweeps.format_table(rows))


def run(args, overrides, runner=None) -> int:
    from sparrow_jax import sweeps
    try:
        members = sweeps.plan(args.config, args.workdir, overrides)
    except sweeps.SweepError as err:
        print(f"sparrow sweep: {err}", file=sys.stderr)
        return 2
    if args.member:
        unknown = set(args.member) - {m.name for m in members}
        if unknown:
            print(f"sparrow sweep: no member named {sorted(unknown)[0]!r}; members: "
                  f"{', '.join(m.name for m in members)}", file=sys.stderr)
            return 2
        members = [m for m in members if m.name in args.member]
    if args.summarize and args.workdir.startswith("gs://"):
        print("sparrow sweep: --summarize reads local directories; copy the results first "
              "(gcloud storage rsync -r gs://... DIR) and pass --workdir DIR", file=sys.stderr)
        return 2
    code = 0
    target = None
    if args.tpu:
        from sparrow_jax.launch.gcloud import LaunchError
        from sparrow_jax.launch.runner import DryRunRunner, SubprocessRunner
        try:
            target = _TpuTarget(args, runner or (DryRunRunner() if args.dry_run
                                                  else SubprocessRunner()))
            for m in members:
                target.cli.check_workdir(m.workdir, args.accelerator_type, False)
        except LaunchError as err:
            print(f"sparrow sweep: {err}", file=sys.stderr)
            return 2
    if args.dry_run or not (args.local or args.tpu or args.summarize):
        commands = [target.command(args.config, m, overrides) if target else
                    local_command(args.config, m.workdir, [*overrides, *m.args])
                    for m in members]
        _print_plan(members, commands, args.json and not args.summarize)
    elif args.local:
        if args.workdir.startswith("gs://"):
            print("sparrow sweep: --local needs a local --workdir", file=sys.stderr)
            return 2
        code = _run_local(args.config, members, overrides, args.force)
    elif args.tpu:
        code = _run_tpu(target, args.config, members, overrides)
    if args.summarize:
        _summarize(members, args)
    return code
