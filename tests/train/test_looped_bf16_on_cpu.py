"""Looped bfloat16 layers cannot train on XLA:CPU: a clear error before anything compiles."""
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
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    with pytest.raises(config_lib.ConfigError, match="scan_layers"):
        stages.build_stage(cfg, mesh, "sft", log_unsharded=False)
    # Scanned, the same config builds (and the tiny_cpu default, looped float32, too).
    for model in ({"compute_dtype": "bfloat16", "scan_layers": True}, {}):
        cfg = _sft_config(**model)
        stages.build_stage(cfg, mesh, "sft", log_unsharded=False)
