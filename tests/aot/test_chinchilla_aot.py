"""`sparrow aot` on the Chinchilla 1B and 7B experiment configs.

Default: the configs, their variants and sweeps load and validate; the real
shapes have the hand-counted number of parameters. With --runslow: every step of
each config (the updates, the RL sampler and the rule scorer) compiles at 2 layers
on its default variant's simulated mesh (the two configs compile in parallel
subprocesses), and every variant at full depth compiles every step within its HBM
budget.
"""
import os

import pytest

from aot_cli import ROOT, finish_cli, start_cli
from sparrow_jax import aot, sweeps
from sparrow_jax.config import HBM_BUDGET_GIB, load_experiment, load_experiment_module
from sparrow_jax.rl.lengths import sequence_length

CONFIGS = {name: os.path.join(ROOT, "experiments", f"{name}.py")
           for name in ("chinchilla_1b", "chinchilla_7b")}
STEPS = aot.AOT_STEPS  # the updates, the RL sampler and the rule scorer
# The size each file's name claims (trunk + policy), for a loose check of the shape.
NOMINAL_PARAMS = {"chinchilla_1b": 1.0e9, "chinchilla_7b": 7.0e9}
VARIANTS = [(name, variant) for name, path in CONFIGS.items()
            for variant in sorted(load_experiment_module(path).MESHES)]
REDUCED_LAYERS = 2


def block_params(m) -> int:
    """One decoder block: query, key, value, rel_proj [D, H, K] and out [H, K, D] (5 D H K),
    u and v biases [H, K], two RMSNorm scales [D], MLP wi [D, F] and wo [F, D]. Valid for
    relative positions and the dense GELU MLP."""
    assert (m.position, m.mlp) == ("relative", "gelu")
    d, hk = m.d_model, m.n_heads * m.head_dim
    return 5 * d * hk + 2 * hk + 2 * d + 2 * d * m.d_ff


def top_params(m, n_top_layers: int, head_width: int) -> int:
    """A role's own top: its blocks, final RMSNorm [D] and head [D, head_width]."""
    return n_top_layers * block_params(m) + m.d_model + m.d_model * head_width


def lm_params(m, n_layers: int) -> int:
    """Trunk + policy: embedding [V, D], n_layers blocks, final norm, untied unembedding [D, V]."""
    assert not m.tied_embeddings
    return m.vocab_size * m.d_model + top_params(m, n_layers, m.vocab_size)


def check_report(report, cfg):
    """Every step compiled on cfg's mesh within its HBM budget; parameter counts by hand."""
    m, devices, tensor = cfg.model, cfg.mesh.aot_num_devices, cfg.mesh.shape.tensor
    assert report["num_devices"] == devices
    assert report["mesh_shape"] == {"data": 1, "fsdp": devices // tensor, "tensor": tensor}
    n_layers, n_frozen = report["n_layers"], report["n_frozen_layers"]
    assert 0 < n_frozen < n_layers
    assert report["total_params"] == lm_params(m, n_layers)
    assert set(report["steps"]) == set(STEPS)
    budget = HBM_BUDGET_GIB[cfg.mesh.hbm] * 2**30
    for name, step in report["steps"].items():
        assert step["hbm_budget_bytes"] == budget, name
        assert 0 < step["per_device_bytes"]["total"] <= budget, name
        assert step["fits"] and step["flops_per_step"] > 0, name
    # SFT trains exactly the policy's own top: the layers above the frozen trunk + unembed.
    policy_top = top_params(m, n_layers - n_frozen, m.vocab_size)
    assert report["steps"]["sft"]["trainable_params"] == policy_top
    length = sequence_length(cfg)
    assert report["rl_sequence_length"] == length >= 1024
    assert report["steps"]["rl"]["batch"]["tokens_BxL"] == [cfg.train.batch_size, length]


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_variant_config_and_sweep_validate(name, variant, tmp_path):
    spec = f"{CONFIGS[name]}:{variant}"
    cfg = load_experiment(spec)
    m, t = cfg.model, cfg.train
    assert cfg.name == f"{name}_{variant}" and t.stage == "rl" and t.optimizer == "adafactor"
    assert m.n_frozen_layers == round(0.8 * m.n_layers)  # Sparrow's 64 of 80
    assert (m.vocab_size, m.max_len, t.seq_len, m.remat) == (32000, 2048, 2048, "full")
    assert (m.param_dtype, m.compute_dtype) == ("float32", "bfloat16")
    assert cfg.mesh.hbm == variant.split("_")[0]
    batch_shards = cfg.mesh.aot_num_devices // cfg.mesh.shape.tensor
    assert t.batch_size % (t.grad_accum_steps * batch_shards) == 0  # even microbatches
    members = sweeps.plan(spec, str(tmp_path))  # loads and validates every member
    assert len(members) >= 2 and len({mb.workdir for mb in members}) == len(members)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_real_shape_param_count(name):
    cfg = load_experiment(CONFIGS[name])
    m = cfg.model
    parts = aot.part_params(m)  # abstract: nothing allocated
    assert parts["trunk"] + parts["policy"] == lm_params(m, m.n_layers)
    assert parts["policy"] == top_params(m, m.n_layers - m.n_frozen_layers, m.vocab_size)
    assert abs(lm_params(m, m.n_layers) / NOMINAL_PARAMS[name] - 1) < 0.1


@pytest.fixture(scope="module")
def reduced_depth_reports():
    """Both configs' default variants at REDUCED_LAYERS, compiled at the same time."""
    started = {name: start_cli(path, "--layers", str(REDUCED_LAYERS))
               for name, path in CONFIGS.items()}
    return {name: finish_cli(run)[0] for name, run in started.items()}


# Slow since session 9 (132 s of the default run): the open-weight and 70B configs' aot tests
# compile the same steps at reduced depth by default.
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_step_compiles_at_reduced_depth(name, reduced_depth_reports):
    report = reduced_depth_reports[name]
    check_report(report, load_experiment(CONFIGS[name]))
    assert (report["n_layers"], report["n_frozen_layers"]) == (REDUCED_LAYERS, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name,variant", VARIANTS)
def test_full_depth_fits(name, variant):
    spec = f"{CONFIGS[name]}:{variant}"
    cfg = load_experiment(spec)
    report, seconds = finish_cli(start_cli(spec))
    check_report(report, cfg)
    assert report["n_layers"] == cfg.model.n_layers
    assert report["n_frozen_layers"] == cfg.model.n_frozen_layers
    assert seconds < 300
