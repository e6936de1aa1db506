"""Execute command lines, or print them (`--dry-run`).

A runner has one method, `run(argv, capture=False, log_path=None) -> Result`.
`capture=True` returns the command's stdout (used to read TPU states);
`log_path` streams the output to the console and appends it to a local file.
Tests substitute their own runner with the same method.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from typing import Protocol, Sequence, TextIO


@dataclasses.dataclass(frozen=True)
class Result:
    returncode: int
    output: str = ""


class Runner(Protocol):
    def run(self, argv: Sequence[str], *, capture: bool = False,
            log_path: str | None = None) -> Result: ...


def format_command(argv: Sequence[str]) -> str:
    """One shell-quoted line that runs `argv` when pasted into a shell."""
    return shlex.join(argv)


class DryRunRunner:
    """Prints each command on one line and pretends it succeeded with empty output."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.commands: list[list[str]] = []

    def run(self, argv, *, capture=False, log_path=None) -> Result:
        self.commands.append(list(argv))
        print(format_command(argv), file=self.stream, flush=True)
        return Result(0, "")


class SubprocessRunner:
    """Runs commands for real. A missing executable is exit code 127, not a traceback."""

    def __init__(self, stream: TextIO | None = None, echo: bool = True):
        self.stream = stream if stream is not None else sys.stdout
        self.echo = echo

    def run(self, argv, *, capture=False, log_path=None) -> Result:
        if self.echo:
            print(f"+ {format_command(argv)}", file=sys.stderr, flush=True)
        try:
            if capture:
                proc = subprocess.run(list(argv), capture_output=True, text=True)
                return Result(proc.returncode, proc.stdout)
            if log_path is None:
                return Result(subprocess.run(list(argv)).returncode)
            return Result(self._tee(argv, log_path))
        except FileNotFoundError as err:
            print(f"cannot run {argv[0]!r}: {err}", file=sys.stderr)
            return Result(127, "")

    def _tee(self, argv, log_path: str) -> int:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        with open(log_path, "a") as log, subprocess.Popen(
                list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, bufsize=1) as proc:
            log.write(f"$ {format_command(argv)}\n")
            for line in proc.stdout:
                self.stream.write(line)
                self.stream.flush()
                log.write(line)
                log.flush()
            return proc.wait()
