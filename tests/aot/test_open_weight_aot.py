"""The open-weight experiment configs at their real shapes (issue 18): experiments/gemma_2b.py and
experiments/llama3_2_1b.py.

Default: every variant loads and validates, its sweep plans; the model keys define the params
`sparrow import` writes for the same config.json (so `train.init_from` of an import restores
into them); the real shapes have the hand-counted number of parameters; and the rl, sample
and rule_score steps of each family compile at 2 layers on its v5e_8 mesh (8 simulated chips;
the two families in parallel `sparrow aot` subprocesses with XLA's backend optimisation level 0,
which compiles faster and leaves the buffer assignment, hence the memory figures, as they are).
With --runslow: every variant at full depth compiles every step within its chips' HBM.
"""
import json
import os

import pytest

from aot_cli import ROOT, finish_cli, start_cli
from sparrow_jax import aot, sweeps
from sparrow_jax.config import HBM_BUDGET_GIB, load_experiment, load_experiment_module
from sparrow_jax.hf.families import model_overrides
from sparrow_jax.hf.importer import default_frozen_layers, import_config
from sparrow_jax.rl.lengths import sequence_length
from sparrow_jax.sweep_sources import FREE_MODEL_KEYS
from xla_flags import child_xla_flags

CONFIGS = {name: os.path.join(ROOT, "experiments", f"{name}.py")
           for name in ("gemma_2b", "llama3_2_1b")}
MODULES = {name: load_experiment_module(path) for name, path in CONFIGS.items()}
VARIANTS = [(name, variant) for name, module in MODULES.items()
            for variant in sorted(module.MESHES)]
# The published sizes (trunk + policy = the whole LM; both tie the head to the embedding).
NOMINAL_PARAMS = {"gemma_2b": 2.51e9, "llama3_2_1b": 1.24e9}
REDUCED_LAYERS = 2
# The RL update (the policy, teacher and value forward / backward: the model code the sft and
# RM updates run too), the cached decode and the rule scorer's per-rule cache copies.
REDUCED_STEPS = ("rl", "sample", "rule_score")


def lm_params(hf: dict, vocab: int) -> int:
    """Embedding [V, D] (tied: also the head), per layer q [D, H K], k and v [D, G K],
    o [H K, D], two RMSNorm scales and the gated MLP's gate, up [D, F] and down [F, D];
    the final norm."""
    d, h, g = hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"]
    k, f = hf["head_dim"], hf["intermediate_size"]
    layer = 2 * d * h * k + 2 * d * g * k + 2 * d + 3 * d * f
    assert hf["tie_word_embeddings"]
    return vocab * d + hf["num_hidden_layers"] * layer + d


def start_aot(spec, *argv):
    """`sparrow aot --json` (`aot_cli.start_cli`) at XLA's backend optimisation level 0, with the
    rule scorer at one rule per step: aot compiles one rl.rule_chunk, not the measured choice."""
    return start_cli(spec, *argv, "--config.rl.rule_chunk=1", xla_flags=child_xla_flags())


def check_report(report, name, cfg, steps):
    """Every step compiled on cfg's mesh (FSDP over every chip) within its HBM budget."""
    devices = cfg.mesh.aot_num_devices
    assert report["num_devices"] == devices
    assert report["mesh_shape"] == {"data": 1, "fsdp": devices, "tensor": 1}
    assert 0 < report["n_frozen_layers"] < report["n_layers"]
    assert set(report["steps"]) == set(steps)
    budget = HBM_BUDGET_GIB[cfg.mesh.hbm] * 2**30
    for step_name, step in report["steps"].items():
        assert step["hbm_budget_bytes"] == budget, step_name
        assert 0 < step["per_device_bytes"]["total"] <= budget, (step_name, step)
        assert step["fits"] and step["flops_per_step"] > 0, step_name
    if "rl" in steps:
        assert report["steps"]["rl"]["batch"]["tokens_BxL"] == [cfg.train.batch_size,
                                                                 sequence_length(cfg)]


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_variant_config_and_sweep_validate(name, variant, tmp_path):
    spec = f"{CONFIGS[name]}:{variant}"
    cfg = load_experiment(spec)
    m, t = cfg.model, cfg.train
    assert cfg.name == f"{name}_{variant}" and t.stage == "rl" and t.optimizer == "adafactor"
    assert t.init_from == MODULES[name].IMPORTED
    assert (m.param_dtype, m.compute_dtype, m.remat) == ("float32", "bfloat16", "full")
    assert cfg.mesh.hbm == variant.split("_")[0]
    assert t.batch_size % (t.grad_accum_steps * cfg.mesh.aot_num_devices) == 0
    assert sequence_length(cfg) <= m.max_len == t.seq_len
    members = sweeps.plan(spec, str(tmp_path))
    assert len(members) >= 2 and len({mb.workdir for mb in members}) == len(members)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_is_what_import_writes_for_the_config_json(name, tmp_path):
    """The params-defining model keys equal those of `sparrow import` on the same config.json
    (default --n-frozen-layers), so the import's checkpoint restores into this config."""
    module = MODULES[name]
    hf_dir = tmp_path / name
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps(module.HF_CONFIG))
    imported, family = import_config(str(hf_dir))
    assert family == name.split("_")[0].rstrip("3")
    cfg = load_experiment(CONFIGS[name])
    for key in cfg.model:
        if key in FREE_MODEL_KEYS or key in ("vocab_size", "value_hidden", "value_layers",
                                             "pref_rm_likelihood"):
            continue   # free keys; the value head and RM readout are not in an lm checkpoint
        assert cfg.model[key] == imported.model[key], key
    # Without tokenizer.model the import keeps the checkpoint's rows; with the family's
    # SentencePiece model it appends the control ids that model lacks (module docstrings).
    assert imported.model.vocab_size == module.HF_CONFIG["vocab_size"]
    assert cfg.model.vocab_size == module.VOCAB_SIZE
    assert cfg.model.n_frozen_layers == default_frozen_layers(cfg.model.n_layers)
    assert model_overrides(module.HF_CONFIG)["n_kv_heads"] == cfg.model.n_kv_heads > 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_real_shape_param_count(name):
    cfg = load_experiment(CONFIGS[name])
    parts = aot.part_params(cfg.model)   # abstract: nothing allocated
    expected = lm_params(MODULES[name].HF_CONFIG, cfg.model.vocab_size)
    assert parts["trunk"] + parts["policy"] == expected
    assert abs(expected / NOMINAL_PARAMS[name] - 1) < 0.01


@pytest.fixture(scope="module")
def reduced_depth_reports():
    """Both families' v5e_8 variants at REDUCED_LAYERS, compiled at the same time."""
    started = {name: start_aot(f"{path}:v5e_8", "--layers", str(REDUCED_LAYERS),
                               "--steps", ",".join(REDUCED_STEPS))
               for name, path in CONFIGS.items()}
    return {name: finish_cli(run, timeout=1800)[0] for name, run in started.items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_steps_compile_at_reduced_depth(name, reduced_depth_reports):
    report = reduced_depth_reports[name]
    check_report(report, name, load_experiment(f"{CONFIGS[name]}:v5e_8"), REDUCED_STEPS)
    assert (report["n_layers"], report["n_frozen_layers"]) == (REDUCED_LAYERS, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name,variant", VARIANTS)
def test_full_depth_fits(name, variant):
    spec = f"{CONFIGS[name]}:{variant}"
    cfg = load_experiment(spec)
    report, _ = finish_cli(start_aot(spec), timeout=1800)
    check_report(report, name, cfg, aot.AOT_STEPS)
    assert report["n_layers"] == cfg.model.n_layers
    assert report["n_frozen_layers"] == cfg.model.n_frozen_layers
    assert report["total_params"] == lm_params(MODULES[name].HF_CONFIG, cfg.model.vocab_size)
