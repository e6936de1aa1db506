"""Looped bfloat16 layers with relative positions cannot train on XLA:CPU: a clear error
before anything compiles."""
import os

import jax
import pytest

from sparrow_jax import config as config_lib
from sparrow_jax import sharding as shd
from sparrow_jax.train import stages


def _sft_config(**model):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = config_lib.load_experiment(os.path.join(root, "experiments", "tiny_cpu.py") + ":sft")
    for key, value in model.items():
        setattr(cfg.model, key, value)
    return cfg


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU limitation")
def test_looped_bfloat16_layers_are_refused_on_cpu():
    cfg = _sft_config(compute_dtype="bfloat16", scan_layers=False)
    assert cfg.model.position == "relative"
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    with pytest.raises(config_lib.ConfigError, match="scan_layers"):
        stages.build_stage(cfg, mesh, "sft", log_unsharded=False)
    # Scanned, or with rotary positions, the same config trains a step; so does the
    # tiny_cpu default (looped, float32).
    for model in ({"compute_dtype": "bfloat16", "scan_layers": True},
                  {"compute_dtype": "bfloat16", "position": "rotary"}, {}):
        cfg = _sft_config(d_model=32, d_ff=64, n_heads=2, head_dim=16, vocab_size=256, **model)
        setup = stages.build_stage(cfg, mesh, "sft", batch_size=2, seq_len=16,
                                   log_unsharded=False)
        state = setup.init_fn(jax.random.PRNGKey(0))
        batch = stages.example_batch("sft", 2, 16, cfg.model.vocab_size)
        state, metrics = setup.step(state, batch)
        assert bool(jax.numpy.isfinite(metrics["loss"])), model
