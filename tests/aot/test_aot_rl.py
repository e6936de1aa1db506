"""`sparrow aot` steps sample and rule_score, in process on the 8 test devices."""
import os

import pytest

from sparrow_jax import aot
from sparrow_jax.config import load_experiment, model_parallel_decode_rules
from sparrow_jax.rl.lengths import sequence_length

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def report():
    """tiny_cpu's rl variant on a 2 x 2 x 2 mesh, wider and deeper than it is (so each
    scanned stack has 2 layers and its weights dominate the traffic), decoding model-parallel."""
    cfg = load_experiment(os.path.join(ROOT, "experiments", "tiny_cpu.py") + ":rl")
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 2
    cfg.mesh.decode_logical_axis_rules = model_parallel_decode_rules()
    m = cfg.model
    m.n_layers, m.n_frozen_layers, m.d_model, m.d_ff, m.n_heads = 4, 2, 256, 1024, 4
    m.head_dim = 64
    m.scan_layers = True  # as the pod configs run (tiny_cpu loops its layers)
    cfg.train.batch_size, cfg.rl.max_prompt_len, cfg.rl.max_new_tokens = 8, 40, 8
    return cfg, aot.run_aot(cfg, steps=("rl", "sample", "rule_score"), num_devices=8)


def test_rl_steps_report_bytes_and_fit(report):
    cfg, r = report
    assert set(r["steps"]) == {"rl", "sample", "rule_score"}
    for name, step in r["steps"].items():
        b = step["per_device_bytes"]
        assert b["total"] == (b["arguments"] + b["temporaries"] + b["outputs"] - b["aliased"]
                              + b["resident"]), name
        assert b["total"] > 0 and step["fits"] and step["flops_per_step"] > 0, name
    # The RL state stays on the devices while sampling and scoring.
    assert r["steps"]["sample"]["per_device_bytes"]["resident"] > 0
    assert r["steps"]["rule_score"]["per_device_bytes"]["resident"] > 0
    assert r["steps"]["sample"]["batch"] == {"tokens_BxP": [8, 40], "new_tokens": 8}
    score = r["steps"]["rule_score"]["batch"]
    assert score["rules"] == 23 and score["rule_chunk"] == cfg.rl.rule_chunk
    assert sum(n for n, _ in score["rule_groups"]) == 23
    text = aot.format_report(r)
    assert "rule_score" in text and "per decode step" in text


def test_rl_sequence_length_is_the_trainers(report):
    cfg, r = report
    length = sequence_length(cfg)
    assert r["rl_sequence_length"] == length == 8 * -(-(40 + 8 + 1) // 8)
    assert r["steps"]["rl"]["batch"]["tokens_BxL"] == [8, length]
    assert r["steps"]["rule_score"]["batch"]["tokens_BxL"] == [8, length]


def test_decode_layout_moves_less_per_token(report):
    _, r = report
    sample = r["steps"]["sample"]
    assert sample["layout"] == "decode"
    decode, training = sample["collectives"], sample["training_layout"]["collectives"]
    assert decode["loop_found"] and training["loop_found"]
    # The training layout gathers each layer's weights in the loop; the decode layout does not.
    assert training["loop"]["by_kind"]["all-gather"]["bytes"] > 0
    assert decode["bytes_per_decode_step"] * 4 < training["bytes_per_decode_step"]
