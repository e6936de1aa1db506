"""The recipe as a pod runs it: stages and `sparrow eval` through the `sparrow` command in
2 processes x 2 CPU devices (coordinator on 127.0.0.1), against the same commands in 1 process x
4 devices. Same global mesh, same global batches: the summaries must agree to 1e-4 and the
parameters to 1e-5.

By default the RL stage and `sparrow eval` run so, from the same SFT start and reward models.
With --runslow every stage runs so, from the language model on; then one process of the
2-process RL run is killed, both are rerun, and the run resumes to the uninterrupted run's state.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from loop_helpers import REPO, TINY, make_world, state_leaves, tiny_overrides
from multiprocess_runs import free_port
from xla_flags import child_xla_flags
from sparrow_jax.config import model_parallel_decode_rules

pytestmark = pytest.mark.long_running(200)

STAGES = (("lm", None), ("sft", "lm"), ("pref_rm", "sft"), ("rule_rm", "sft"), ("rl", "sft"))
# RL on a data 2 x fsdp 2 mesh, sampling in the pod configs' model-parallel decode layout
# (weights split over fsdp by heads / MLP / vocabulary, resharded every step).
# Two batch widths (112 and 88) and two prompt widths (96 and 48): every process must pick the
# same one each step and each sampler call.
RL_KNOBS = {"rl.max_prompt_len": 96, "rl.max_new_tokens": 12, "rl.normaliser_batches": 1,
            "rl.length_buckets": "(0.75,)", "rl.prompt_buckets": "(0.5,)",
            "train.checkpoint_every": 1, "mesh.shape.data": 2, "mesh.shape.fsdp": 2,
            "mesh.decode_logical_axis_rules": repr(model_parallel_decode_rules())}
STEPS = 3
TIMEOUT = 600


def _launch(args: list[str], processes: int, log_prefix: str) -> list[subprocess.Popen]:
    """`sparrow ARGS` as `processes` processes sharing 4 CPU devices, logs to LOG_PREFIX.<i>."""
    devices = 4 // processes
    port = free_port()
    procs = []
    for index in range(processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=child_xla_flags(devices))
        extra = [] if processes == 1 else [
            "--config.distributed.mode=explicit", f"--config.distributed.coordinator=127.0.0.1:{port}",
            f"--config.distributed.num_processes={processes}",
            f"--config.distributed.process_id={index}"]
        log = open(f"{log_prefix}.{index}", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "sparrow_jax", *args, *extra], cwd=REPO,
                                      env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
        log.close()
    return procs


def _wait(procs: list[subprocess.Popen], log_prefix: str) -> None:
    deadline = time.time() + TIMEOUT
    try:
        for index, proc in enumerate(procs):
            code = proc.wait(timeout=max(1.0, deadline - time.time()))
            with open(f"{log_prefix}.{index}") as f:
                assert code == 0, f"process {index} exited {code}:\n{f.read()[-4000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _stage_args(stage: str, root: str, world: str, steps: int = STEPS, **extra) -> list[str]:
    knobs = dict(RL_KNOBS) if stage == "rl" else {}
    source = dict(STAGES)[stage]
    if source:
        knobs["train.init_from"] = os.path.join(root, source)
    if stage == "rl":
        knobs.update({"rl.pref_rm_from": os.path.join(root, "pref_rm"),
                      "rl.rule_rm_from": os.path.join(root, "rule_rm")})
    knobs.update(extra)
    return ["train", "--config", f"{TINY}:{stage}", "--workdir", os.path.join(root, stage),
            *tiny_overrides(world, steps=steps, **knobs)]


def _run_stages(root: str, world: str, processes: int, stages) -> None:
    """Each of `stages` in turn (its sources in `root`), then `sparrow eval` of the rl stage."""
    for stage in stages:
        args = _stage_args(stage, root, world)
        _wait(_launch(args, processes, f"{root}/{stage}.log"), f"{root}/{stage}.log")
    eval_args = ["eval", "--workdir", os.path.join(root, "rl"), "--max-prompts", "8",
                 "--batch-size", "8", "--out", os.path.join(root, "eval")]
    _wait(_launch(eval_args, processes, f"{root}/eval.log"), f"{root}/eval.log")


def _figures(tree, prefix=""):
    """{dotted key: number} of the numbers in a JSON tree."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_figures(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix[:-1]: float(tree)}
    return {}


def test_two_process_rl_and_eval_equal_one(rl_inputs, tmp_path):
    runs = {}
    for processes in (1, 2):
        runs[processes] = root = str(tmp_path / f"p{processes}")
        os.makedirs(root)
        for stage in ("sft", "pref_rm", "rule_rm"):
            os.symlink(rl_inputs[stage], os.path.join(root, stage))
        _run_stages(root, rl_inputs["world"], processes, ["rl"])
    _check_equal(runs[1], runs[2], ["rl"])


@pytest.mark.slow
def test_two_processes_train_every_stage_like_one_and_resume_after_a_kill(tmp_path):
    """One test, so that xdist runs the recipe once (a module fixture would run in each worker)."""
    world = make_world(str(tmp_path / "world"))
    stages = [stage for stage, _ in STAGES]
    runs = {"world": world}
    for processes in (1, 2):
        runs[processes] = str(tmp_path / f"p{processes}")
        os.makedirs(runs[processes])
        _run_stages(runs[processes], world, processes, stages)
    _check_equal(runs[1], runs[2], stages)
    _check_kill_and_resume(runs, str(tmp_path / "killed"))


def _check_equal(one: str, two: str, stages) -> None:
    for stage in stages:
        summaries = [json.load(open(os.path.join(root, stage, "summary.json"))) for root in (one, two)]
        assert all(s["finished"] and s["step"] == STEPS for s in summaries), stage
        expected, actual = (_figures(s["eval"]) for s in summaries)
        assert expected.keys() == actual.keys() and expected, stage
        for key in expected:
            assert actual[key] == pytest.approx(expected[key], abs=1e-4, nan_ok=True), (stage, key)
        ref, got = state_leaves(os.path.join(one, stage), STEPS), state_leaves(os.path.join(two, stage), STEPS)
        assert ref.keys() == got.keys()
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], atol=1e-5, rtol=0, err_msg=f"{stage} {key}")
    reports = [json.load(open(os.path.join(root, "eval", "report.json"))) for root in (one, two)]
    assert reports[0]["data"]["prompts"] == reports[1]["data"]["prompts"] > 0
    expected, actual = (_figures(r["metrics"]) for r in reports)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], abs=1e-4, nan_ok=True), key
    # Both processes finished cleanly (process 0 writes the report).
    for index in (0, 1):
        with open(os.path.join(two, f"eval.log.{index}")) as f:
            assert "Traceback" not in f.read()


def _check_kill_and_resume(runs: dict, root: str) -> None:
    """SIGKILL process 1 of a 2-process RL run after its first checkpoint (the pod loses a
    host; the survivor is stopped too, as a slice restart does), rerun both: the run resumes
    and ends in the uninterrupted 2-process run's state."""
    os.makedirs(root)
    for stage in ("sft", "pref_rm", "rule_rm"):
        os.symlink(os.path.join(runs[2], stage), os.path.join(root, stage))
    args = _stage_args("rl", root, runs["world"])
    procs = _launch(args, 2, f"{root}/rl.log")
    ckpt_dir = os.path.join(root, "rl", "checkpoints")
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        done = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
        if done:
            break
        assert all(p.poll() is None for p in procs), "a process ended before the first checkpoint"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    procs[0].kill()
    procs[0].wait()
    saved = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    assert saved < STEPS

    _wait(_launch(args, 2, f"{root}/rerun.log"), f"{root}/rerun.log")
    with open(f"{root}/rerun.log.0") as f:
        assert "resuming rl from step" in f.read()
    expected = state_leaves(os.path.join(runs[2], "rl"), STEPS)
    actual = state_leaves(os.path.join(root, "rl"), STEPS)
    assert expected.keys() == actual.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
