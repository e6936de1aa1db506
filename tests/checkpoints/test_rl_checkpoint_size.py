"""An rl checkpoint of the tiny run (experiments/tiny_cpu.py:rl) takes at most 1.25x the bytes of
its trainable params plus optimizer state: it leaves out the frozen trunk, teacher and reward models.

The state is the tiny run's rl TrainState (its model, optimizer and mesh) with every leaf drawn at
random, so compression cannot make it look smaller than a trained one; it is written by
`rl.checkpoint.save`, as `train_rl` writes it.
"""
import os

import jax
import numpy as np

from sparrow_jax import sharding as shd
from sparrow_jax.config import load_experiment
from sparrow_jax.rl import checkpoint as rl_checkpoint
from sparrow_jax.train import stages
from sparrow_jax.train.checkpoints import Checkpointer
from sparrow_jax.train.frozen_sources import FrozenSource

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "tiny_cpu.py")


def _random_like(tree, seed):
    """Same shapes, dtypes and shardings; normal draws (float) or random bits (int)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))

    def draw(key, x):
        if np.issubdtype(x.dtype, np.floating):
            return jax.random.normal(key, x.shape, x.dtype)
        return jax.random.randint(key, x.shape, 0, 1 << 30).astype(x.dtype)

    out = [jax.jit(draw, out_shardings=x.sharding)(k, x) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, out)


def _bytes_on_disk(directory) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(directory) for f in files)


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_rl_checkpoint_of_the_tiny_run_is_at_most_1_25x_params_plus_optimizer_state(tmp_path):
    cfg = load_experiment(f"{TINY}:rl")
    mesh = shd.make_mesh(cfg.mesh)
    setup = stages.build_stage(cfg, mesh, "rl", seq_len=cfg.train.seq_len, log_unsharded=False)
    state = _random_like(setup.init_fn(jax.random.PRNGKey(0)), seed=1)
    references = {part: FrozenSource(f"/runs/{part}", 100, part, "0" * 32, "train.init_from")
                  for part in state.frozen}
    ckpt = Checkpointer(str(tmp_path / "rl"), async_save=False)
    rl_checkpoint.save(ckpt, 7, state, references, meta={"config": cfg.to_dict()},
                       assets={"tokenizer.model": b"x" * 1000})
    ckpt.close()

    trainable = _nbytes(state.params) + _nbytes(state.opt_state)
    on_disk = _bytes_on_disk(tmp_path / "rl" / "7" / "state")
    ratio = on_disk / trainable
    print(f"tiny rl checkpoint: {on_disk} bytes on disk; params + opt_state {trainable} bytes; "
          f"ratio {ratio:.3f}; frozen (left out) {_nbytes(state.frozen)} bytes")
    assert ratio <= 1.25
    # The state with its frozen parts, as rl checkpoints used to be, would not fit.
    assert (trainable + _nbytes(state.frozen)) / trainable > 1.25
