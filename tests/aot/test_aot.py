"""`sparrow aot`: JSON report keys, analytic FLOPs, bad meshes, and the 70B runs (slow)."""
import json
import os
import time

import pytest

from aot_cli import ROOT, finish_cli, start_cli
from sparrow_jax import aot, cli
from sparrow_jax.config import ConfigError, load_experiment
from sparrow_jax.rl.lengths import sequence_length

CONFIG_70B = os.path.join(ROOT, "experiments", "sparrow_70b.py")
CONFIG_TINY = os.path.join(ROOT, "experiments", "tiny_cpu.py")
STEP_KEYS = {"per_device_bytes", "hbm_budget_bytes", "fits", "flops_per_step", "trainable_params"}


def check_report(report, steps, devices=256, hbm_gib=95):
    assert report["num_devices"] == devices
    assert report["mesh_shape"] == {"data": 1, "fsdp": devices // 4, "tensor": 4}
    assert report["hydra_params"] > report["total_params"] > 0
    assert set(report["steps"]) == set(steps)
    for name, step in report["steps"].items():
        assert STEP_KEYS <= set(step), name
        assert {"arguments", "temporaries", "resident", "total"} <= set(step["per_device_bytes"])
        assert step["per_device_bytes"]["total"] > 0
        assert step["hbm_budget_bytes"] == hbm_gib * 2**30
        assert step["flops_per_step"] > 0
        if name in aot.UPDATE_STEPS:
            assert 0 < step["trainable_params"] < report["hydra_params"], name
        else:  # the sampler and the rule scorer train nothing
            assert step["trainable_params"] == 0, name
    assert "CPU compiler" in report["note"]
    check_rl_lengths(report)


def check_rl_lengths(report):
    """The rl step, rule scorer and sampler run at the lengths the RL trainer uses."""
    length = report["rl_sequence_length"]
    assert length == sequence_length(load_experiment(CONFIG_70B))
    episodes = report["batch_size"]
    if "rl" in report["steps"]:
        assert report["steps"]["rl"]["batch"]["tokens_BxL"] == [episodes, length]
    if "rule_score" in report["steps"]:
        assert report["steps"]["rule_score"]["batch"]["tokens_BxL"] == [episodes, length]
    if "sample" in report["steps"]:
        prompt, new = report["steps"]["sample"]["batch"]["tokens_BxP"][1], \
            report["steps"]["sample"]["batch"]["new_tokens"]
        assert length == 8 * -(-(prompt + new + 1) // 8)


@pytest.mark.slow  # 2-3 min; the in-process tiny aot tests cover the same steps by default
def test_aot_70b_shape_two_layers_json():
    report, _ = finish_cli(start_cli(CONFIG_70B, "--layers", "2"), timeout=600)
    check_report(report, aot.AOT_STEPS)  # the default --steps: every step
    assert report["n_layers"] == 2 and report["n_frozen_layers"] == 1
    for name in ("sample", "rule_score"):
        assert report["steps"][name]["fits"], name
    sample = report["steps"]["sample"]
    assert sample["layout"] == "decode"
    for part in (sample, sample["training_layout"]):
        assert part["collectives"]["loop_found"] and part["per_device_bytes"]["total"] > 0


@pytest.mark.slow
def test_aot_70b_full_depth():
    report, seconds = finish_cli(start_cli(CONFIG_70B), timeout=600)
    check_report(report, aot.AOT_STEPS)
    assert 69e9 <= report["total_params"] <= 71e9
    assert all(step["fits"] for step in report["steps"].values())
    assert seconds < 600


@pytest.mark.slow
@pytest.mark.parametrize("variant,hbm_gib", [("v5p_256", 95), ("v4_256", 32)])
def test_aot_70b_rl_steps_fit_on_128_chips(variant, hbm_gib):
    """What an RL step runs, at full depth: the update, the sampler and the rule scorer."""
    steps = ("rl", "sample", "rule_score")
    report, _ = finish_cli(start_cli(f"{CONFIG_70B}:{variant}", "--steps", ",".join(steps)),
                           timeout=600)
    check_report(report, steps, devices=128, hbm_gib=hbm_gib)
    assert report["rl_sequence_length"] >= 1024
    for name in steps:
        assert report["steps"][name]["fits"], (name, report["steps"][name]["per_device_bytes"])
    # Decoding in the training layout gathers the weights for every token.
    sample = report["steps"]["sample"]
    decode = sample["collectives"]["bytes_per_decode_step"]
    assert decode * 20 < sample["training_layout"]["collectives"]["bytes_per_decode_step"]


def test_bad_mesh_fails_before_compiling_naming_mesh_shape(capsys):
    start = time.time()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["aot", "--config", CONFIG_TINY, "--devices", "8", "--config.mesh.shape.fsdp=3"])
    assert exit_info.value.code == 2
    assert "mesh.shape" in capsys.readouterr().err
    assert time.time() - start < 30
    cfg = load_experiment(CONFIG_TINY)
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 4
    with pytest.raises(ConfigError, match="mesh.shape"):
        aot.run_aot(cfg, steps=("sft",), num_devices=8)


def test_run_aot_in_process_and_analytic_flops():
    cfg = load_experiment(CONFIG_TINY)
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 2
    cfg.train.batch_size, cfg.train.seq_len = 8, 32
    report = aot.run_aot(cfg, steps=("sft",), num_devices=8)
    step = report["steps"]["sft"]
    assert step["fits"] and report["num_devices"] == 8
    # Hand count: trunk (2 frozen layers, forward only) + policy top (2 layers + final
    # norm + unembed, forward and backward).
    m = cfg.model
    tokens, layer_params = 8 * 32, report["params_by_part"]["trunk"] - m.vocab_size * m.d_model
    attn = 4 * 8 * 32**2 * m.n_heads * m.head_dim
    expected = (2 * layer_params * tokens + 2 * attn
                + 3 * (2 * report["params_by_part"]["policy"] * tokens + 2 * attn))
    assert step["flops_per_step"] == pytest.approx(expected)
    text = aot.format_report(report)
    assert "sft" in text and "fits" in text


def test_rl_analytic_flops_count_what_the_update_runs():
    """Teacher and preference RM forward; policy top and value head forward and backward;
    not the rule RM, which scores rules outside the jitted update, nor the frozen trunk,
    whose output the update reads from the rule scorer's prefill."""
    m = load_experiment(CONFIG_TINY + ":rl").model
    batch, length = 4, 64
    parts = aot.part_params(m)
    tokens, attn = batch * length, 4 * batch * length**2 * m.n_heads * m.head_dim
    n_top = m.n_layers - m.n_frozen_layers
    forward = {"value": 2 * parts["value"] * tokens,
               **{top: 2 * parts[top] * tokens + n_top * attn
                  for top in ("policy", "teacher", "pref_rm")}}
    expected = forward["teacher"] + forward["pref_rm"] + 3 * (forward["policy"] + forward["value"])
    assert aot.analytic_flops(m, "rl", batch, length) == pytest.approx(expected)


def test_with_layers_keeps_frozen_fraction():
    cfg = load_experiment(CONFIG_70B)
    small = aot.with_layers(cfg, 10)
    assert (small.model.n_layers, small.model.n_frozen_layers) == (10, 8)
    assert aot.with_layers(cfg, 1).model.n_frozen_layers == 0
    assert cfg.model.n_layers == 80  # the original is untouched


def test_reexecs_when_jax_already_has_too_few_devices(capfd):
    # This pytest process already initialised JAX with 8 devices; 16 needs a fresh process.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["aot", "--config", CONFIG_TINY, "--devices", "16", "--steps", "sft", "--json",
                  "--config.train.batch_size=16", "--config.train.seq_len=32"])
    assert exit_info.value.code == 0
    report = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert report["num_devices"] == 16 and report["mesh_shape"]["data"] == 16
