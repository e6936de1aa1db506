"""Two processes on loopback (4 CPU devices each) compute the same loss as one process
with 8 devices, on the same 2x2x2 global mesh."""
import os

import pytest

from multiprocess_runs import one_and_two_processes
from sparrow_jax import distributed

SCRIPT = os.path.join(os.path.dirname(__file__), "multiprocess_loss.py")


def test_two_process_loopback_matches_single_process():
    ref, outs = one_and_two_processes(SCRIPT)
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
