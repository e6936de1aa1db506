"""The RL stage end to end at toy size: smoke run, SIGKILL + rerun == uninterrupted, bad inputs.

The inputs (sft, pref_rm, rule_rm workdirs: the `rl_inputs` fixture) are made with 2 steps each:
these tests check plumbing and resumption, not learning (BUILD_NOTES.md has the real figures).
"""
import json
import os

import jax
import numpy as np
import pytest

from compile_events import compiled_programs
from loop_helpers import (TINY, check_sigkill_resume, rl_sources, sparrow, tiny_config,
                          tiny_overrides)
from sparrow_jax import sharding as shd
from sparrow_jax.config import ConfigError
from sparrow_jax.rl import lengths, phases, reward_models, trainer
from sparrow_jax.train import init_from
from sparrow_jax.train.checkpoints import Checkpointer
from sparrow_jax.train.metrics import read_metrics

pytestmark = pytest.mark.long_running(160)

# Two part-batch calls side by side (rl.parallel_calls): what auto picks on one CPU device, as
# the kill/resume runs (`sparrow train` processes); the in-process smoke run, on the tests' 8
# host devices, samples in parts too (its rule scorer keeps one call: 4 rows over 8 devices).
# Rollouts and reward scoring with bf16 projection inputs (rl.projection_dtype), as auto picks
# for tiny_cpu on a host with fast bf16 matmuls.
RL_KNOBS = {"rl.max_prompt_len": 96, "rl.max_new_tokens": 12, "rl.normaliser_batches": 1,
            "train.checkpoint_every": 2, "rl.parallel_calls": 2, "rl.projection_dtype": "bfloat16"}


def _knobs(rl_inputs, steps, **extra):
    return {**rl_sources(rl_inputs), "train.steps": steps, **RL_KNOBS, **extra}


def test_rl_smoke_run_logs_every_component_and_keeps_the_reward_models(rl_inputs, tmp_path):
    steps = 5
    cfg = tiny_config("rl", rl_inputs["world"], **_knobs(rl_inputs, steps=steps, **{
        "train.log_every": 1, "rl.rule_chunk": -1, "rl.length_buckets": "(0.75,)",
        "rl.prompt_buckets": "(0.5,)"}))
    clock = phases.PhaseClock()
    # The steps finished when XLA compiled something.
    with compiled_programs(label=lambda: len(clock.history)) as compiles_at_step:
        with phases.timing(clock):
            summary = trainer.train_rl(cfg, str(tmp_path / "rl"))
    assert summary["finished"] and summary["step"] == steps
    records = read_metrics(str(tmp_path / "rl" / "logs"), split="train")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for key in ("reward", "elo", "rule_compliance", "format_penalty_rate", "kl", "entropy",
                "value_loss", "explained_variance", "agent_turn_tokens", "search_rate",
                "episodes_per_second"):
        assert all(np.isfinite(r[key]) for r in records), key
    # Steady state compiles nothing: by step 3 every program of these steps has run (a search
    # came, so the answer after evidence did; no dialogue was continued: the untrained
    # policy's turns are all over length, and malformed dialogues are not kept), and every
    # prompt width (rl.prompt_buckets) compiled before step 1.
    first = records[:3]
    assert any(r["search_rate"] > 0 for r in first)
    assert all(r["continued_rate"] == 0 for r in records)
    assert compiles_at_step and [s for s in compiles_at_step if s >= 3] == [], compiles_at_step
    # Each step ran at the narrowest of the config's widths (rl.length_buckets) holding it,
    # every width compiled before the first step.
    widths = lengths.bucket_widths(cfg)
    ran = [r["batch_width"] for r in records]
    assert len(widths) == 2 and set(ran) <= set(widths) and min(ran) < widths[-1], (widths, ran)
    # The workdir reads back as a whole agent: both reward models, unchanged (from their sources).
    ckpt = Checkpointer(str(tmp_path / "rl" / "checkpoints"))
    meta = ckpt.read_meta(steps)
    # rl.rule_chunk=-1 measured the candidates on the first batch; the checkpoint keeps the choice.
    assert meta["rule_chunk"] in (1, 2, 4, 0)
    assert meta["normaliser"]["count"] == cfg.train.batch_size and all(
        "buffer" in shard for shard in meta["selfplay"].values())  # one state per batch shard
    params, _ = init_from.load_params(str(tmp_path / "rl"), cfg, shd.make_mesh(cfg.mesh))
    source, _ = init_from.load_params(rl_inputs["rule_rm"], cfg, shd.make_mesh(cfg.mesh))
    for a, b in zip(jax.tree.leaves(params["rule_rm"]), jax.tree.leaves(source["rule_rm"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _rl_process(rl_inputs, workdir, steps):
    overrides = tiny_overrides(rl_inputs["world"], steps=steps)
    overrides += [f"--config.{k}={v}" for k, v in _knobs(rl_inputs, steps).items()]
    return sparrow("train", "--config", f"{TINY}:rl", "--workdir", workdir, *overrides)


def test_rl_sigkill_then_rerun_equals_uninterrupted_run(rl_inputs, tmp_path):
    steps = 8
    reference, workdir = check_sigkill_resume(lambda workdir: _rl_process(rl_inputs, workdir, steps),
                                              str(tmp_path), steps, "rl")
    metas = [Checkpointer(os.path.join(d, "checkpoints")).read_meta(steps) for d in (reference, workdir)]
    selfplay = [json.dumps(meta["selfplay"], sort_keys=True) for meta in metas]
    assert selfplay[0] == selfplay[1]  # same prompts drawn, same buffer of dialogues
    assert [meta["projection_dtype"] for meta in metas] == ["bfloat16"] * 2


def test_rl_reward_model_workdirs_are_checked(rl_inputs, tmp_path):
    cfg = tiny_config("rl", rl_inputs["world"], **_knobs(rl_inputs, 1, **{"rl.rule_rm_from": ""}))
    with pytest.raises(ConfigError, match="rl.rule_rm_from is empty"):
        trainer.train_rl(cfg, str(tmp_path / "a"))
    cfg = tiny_config("rl", rl_inputs["world"],
                      **_knobs(rl_inputs, 1, **{"rl.rule_rm_from": rl_inputs["sft"]}))
    with pytest.raises(ConfigError, match="holds a 'sft' checkpoint, not 'rule_rm'"):
        trainer.train_rl(cfg, str(tmp_path / "b"))
    mesh = shd.make_mesh(cfg.mesh)
    params, _ = init_from.load_params(rl_inputs["sft"], cfg, mesh)
    other_trunk = jax.tree.map(lambda x: x + 1, params["trunk"])
    cfg = tiny_config("rl", rl_inputs["world"], **_knobs(rl_inputs, 1))
    with pytest.raises(ConfigError, match="its trunk differs from the policy's"):
        reward_models.load_reward_models(cfg, mesh, other_trunk)
