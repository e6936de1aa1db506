"""Two processes on loopback (4 CPU devices each) compute the same loss as one process
with 8 devices, on the same 2x2x2 global mesh."""
import json
import os
import socket
import subprocess
import sys

import pytest

from sparrow_jax import distributed

SCRIPT = os.path.join(os.path.dirname(__file__), "multiprocess_loss.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_two_process_loopback_matches_single_process():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    single = subprocess.run([sys.executable, SCRIPT, "--local-devices", "8"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, SCRIPT, "--local-devices", "4",
                               "--num-processes", "2", "--process-id", str(i),
                               "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        outs.append(_last_json(out))
    ref = _last_json(single.stdout)
    assert ref["devices"] == 8 and ref["local_rows"] == 8
    assert [o["process"] for o in outs] == [0, 1]
    assert [o["main"] for o in outs] == [True, False]
    for o in outs:
        assert o["devices"] == 8 and o["local_rows"] == 4
        assert o["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert o["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)


def test_auto_mode_is_noop_off_tpu_and_detects_tpu_env():
    class Cfg:
        mode = "auto"
    assert not distributed.on_tpu_vm({})
    assert distributed.on_tpu_vm({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
    assert distributed.initialize(Cfg, environ={}) is False
    Cfg.mode = "off"
    assert distributed.initialize(Cfg) is False


def test_process_batch_slice_single_process():
    assert distributed.process_batch_slice(8) == slice(0, 8)
