"""Shared set-up for the training-loop tests: a small toy world and a tiny config."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from sparrow_jax.config import apply_overrides, load_experiment
from xla_flags import child_xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "experiments", "tiny_cpu.py")

SMALL_WORLD = ["--set", "n_entities=24", "--set", "n_heldout=6", "--set", "n_distractors=3",
               "--set", "n_dialogues=120", "--set", "n_preferences=60",
               "--set", "n_rule_ratings=80", "--set", "n_prompts=30"]


def make_world(out_dir: str) -> str:
    from sparrow_jax.cli import main
    try:
        main(["data", "toyworld", "--out", out_dir, "--seed", "1", *SMALL_WORLD])
    except SystemExit as stop:
        assert stop.code in (0, None), stop.code
    return out_dir


def tiny_overrides(world: str, steps: int = 12, **extra) -> list[str]:
    """A model small enough that a step takes milliseconds; float32 for bitwise tests. RL runs
    at one batch width and one prompt width (each width is a compile per run); the tests of
    widths set them. RL's projection dtype is pinned (float32): runs that tests compare must
    not each measure `auto` on a loaded host (the RL loop tests set bfloat16)."""
    values = {"data.dir": world, "model.vocab_size": 512, "model.d_model": 32,
              "model.n_heads": 2, "model.head_dim": 16, "model.d_ff": 64, "model.n_layers": 2,
              "model.n_frozen_layers": 1, "model.value_hidden": 16, "train.batch_size": 8,
              "train.seq_len": 160, "train.steps": steps, "train.warmup_steps": 2,
              "train.log_every": 1000, "train.eval_batches": 2, "data.rule_len": 128,
              "rl.length_buckets": "()", "rl.prompt_buckets": "()", "rl.projection_dtype": "float32",
              **extra}
    return [f"--config.{k}={v}" for k, v in values.items()]


def tiny_config(stage: str, world: str, **extra):
    return apply_overrides(load_experiment(f"{TINY}:{stage}"), tiny_overrides(world, **extra))


def rl_sources(workdirs: dict) -> dict:
    """The rl stage's config keys naming its sources, from {'sft', 'pref_rm', 'rule_rm': workdir}."""
    return {"train.init_from": workdirs["sft"], "rl.pref_rm_from": workdirs["pref_rm"],
            "rl.rule_rm_from": workdirs["rule_rm"]}


def sparrow(*args, **popen_kwargs) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=child_xla_flags())
    return subprocess.Popen([sys.executable, "-m", "sparrow_jax", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen_kwargs)


def state_leaves(workdir: str, step: int) -> dict:
    """Leaves of the train state saved at `step`, read back with orbax onto this process's first
    device (whatever process layout saved it)."""
    import jax
    import orbax.checkpoint as ocp
    from jax.sharding import SingleDeviceSharding
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(path).item_metadata
    stored = getattr(stored, "tree", stored)
    device = SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), stored,
                          is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    tree = checkpointer.restore(path, target)
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def kill_after_first_checkpoint(victim: subprocess.Popen, workdir: str, timeout: float = 600) -> int:
    """SIGKILL `victim` once a checkpoint is committed while it still runs; the newest step."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
        if done and victim.poll() is None:
            break
        assert victim.poll() is None, "the run finished before it could be killed"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    return max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def check_sigkill_resume(start, root: str, steps: int, stage: str, timeout: float = 900) -> tuple[str, str]:
    """Run `start(workdir)` (a Popen of `sparrow train`) to the end in root/reference; run it in
    root/killed, SIGKILL it after its first checkpoint, rerun it there; assert the rerun resumed and
    the final train states are bitwise equal. Returns (reference workdir, killed workdir)."""
    reference, workdir = os.path.join(root, "reference"), os.path.join(root, "killed")
    run = start(reference)
    out, _ = run.communicate(timeout=timeout)
    assert run.returncode == 0, out

    assert kill_after_first_checkpoint(start(workdir), workdir) < steps

    rerun = start(workdir)
    out, _ = rerun.communicate(timeout=timeout)
    assert rerun.returncode == 0, out
    assert f"resuming {stage} from step" in out

    expected, actual = state_leaves(reference, steps), state_leaves(workdir, steps)
    assert expected.keys() == actual.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    return reference, workdir
