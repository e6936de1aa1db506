"""Run a test script as one process with 8 CPU devices and as two processes with 4 each on
127.0.0.1 (jax.distributed), and read the JSON line each prints last."""
import json
import os
import socket
import subprocess
import sys

TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def one_and_two_processes(script: str, one_args=(), two_args=()) -> tuple[dict, list[dict]]:
    """(the one-process run's JSON, [each of the two processes' JSON]); asserts every exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    single = subprocess.run([sys.executable, script, *one_args, "--local-devices", "8"], env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    procs = [subprocess.Popen([sys.executable, script, *two_args, "--local-devices", "4",
                               "--num-processes", "2", "--process-id", str(i), "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, err[-3000:]
            outs.append(last_json(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return last_json(single.stdout), outs
