"""Smoke test of benchmarks/run.py: every measurement runs at toy sizes (`--quick`).

Checks only that the figures exist and are finite and positive; no timing asserts
(the machine is shared, so speeds are not testable).
"""
import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIGURES = ("matmul_peak_flops", "matmul_peak_flops_bf16", "train_tokens_per_second", "mfu_vs_matmul_peak",
           "mfu_bfloat16", "train_batch_size", "train_seq_len",
           "hydra_cost_ratio", "hydra_work_floor", "hydra_n_layers", "hydra_n_frozen_layers",
           "hydra_batch_size", "hydra_seq_len",
           "rule_prefix_cost_ratio", "rule_suffix_len", "rule_dialogue_len",
           "rule_prefix_work_floor", "kv_decode_speedup", "kv_decode_tokens_per_second",
           "decode_batch_size", "rl_episodes_per_second", "rl_step_seconds", "rl_episode_batch",
           "rl_timed_steps", "rl_agent_turn_tokens")
CONFIG_STRINGS = ("train_compute_dtype", "train_model", "train_stage", "train_remat",
                  "hydra_remat")
# Figures that may be 0 (a rate of something that need not happen in a toy run, a flag).
MAY_BE_ZERO = ("rl_search_rate", "hydra_smeared_keys", "hydra_pref_rm_likelihood")


def _load_runner():
    spec = importlib.util.spec_from_file_location(
        "benchmarks_run", os.path.join(ROOT, "benchmarks", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_json():
    runner = _load_runner()
    return runner, runner.run(quick=True)


@pytest.mark.slow  # ~3 min: every measurement at toy size (keeps the default run under 20 min)
def test_every_figure_is_finite_and_positive(quick_json):
    _, results = quick_json
    missing = [key for key in FIGURES + CONFIG_STRINGS if key not in results]
    assert not missing, f"missing figures {missing}; have {sorted(results)}"
    for key, value in results.items():
        if key in CONFIG_STRINGS:
            assert isinstance(value, str) and value
            continue
        assert isinstance(value, (int, float)), (key, value)
        assert math.isfinite(value) and (value > 0 or key in MAY_BE_ZERO and value == 0), (key, value)


@pytest.mark.slow
def test_results_are_one_json_object(quick_json):
    runner, results = quick_json
    assert json.loads(json.dumps(results)) == results
    assert set(runner.MEASUREMENTS) >= {"matmul_peak", "train_step", "hydra_cost",
                                        "rule_prefix_cost", "kv_decode", "rl_episodes"}
    table = runner.format_table(results)
    assert all(key in table for key in FIGURES)


def test_unknown_measurement_is_an_error():
    runner = _load_runner()
    with pytest.raises(SystemExit):
        runner.main(["--only", "no_such_measurement"])
