"""`sparrow aot --json` in fresh processes, for the tests of the experiment configs."""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_cli(spec, *argv, xla_flags=""):
    """Start `sparrow aot --config SPEC --json ARGV` in a fresh process: it sets its own
    simulated device count, so the tests' XLA_FLAGS are not passed on (`xla_flags` instead)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    proc = subprocess.Popen([sys.executable, "-m", "sparrow_jax", "aot", "--config", spec,
                             "--json", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, time.time()


def finish_cli(started, timeout=900):
    """(JSON report, wall seconds) of a run from start_cli; killed after `timeout` seconds."""
    proc, t0 = started
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), time.time() - t0
