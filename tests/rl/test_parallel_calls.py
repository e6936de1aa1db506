"""Part-batch calls side by side (`rl.parallel_calls`, `sparrow_jax.rl.parallel`): a rollout and
the rule scorer give what one whole-batch call gives, and the setting resolves per backend."""
import dataclasses
import os
import threading

import jax
import numpy as np
import pytest

from compile_events import compiled_programs
from rl_helpers import assert_same_rollouts, contexts_from, make_env, prompt_shapes_per_call
from test_rollout import EchoEngine
from tiny_models import tiny_model_config
from sparrow_jax import sharding as shd
from sparrow_jax.config import ConfigError, default_config, validate
from sparrow_jax.model import hydra
from sparrow_jax.rl import parallel
from sparrow_jax.rl.reward_models import RewardScorer
from sparrow_jax.rl.rollout import rollout
from sparrow_jax.train import stages
from sparrow_jax.train.step import batch_shardings

B = 8


def test_a_rollout_in_parallel_part_calls_equals_one_call(params, model_cfg, tok, prompts):
    env = make_env(model_cfg, tok, EchoEngine(), "free")
    contexts, rng = contexts_from(prompts, B), jax.random.PRNGKey(5)
    one = rollout(env, params, contexts, rng)
    with prompt_shapes_per_call("sample_step") as step_shapes:
        two = rollout(dataclasses.replace(env, parallel_calls=2), params, contexts, rng)
    # The speaker and first turn: two calls of B/2 rows.
    assert [rows for rows, _ in step_shapes] == [B // 2, B // 2]
    searched = [r.searched for r in one.rollouts]
    assert any(searched) and not all(searched)  # answers after evidence were sampled too
    assert_same_rollouts(one, two)


def test_parallel_run_keeps_order_uses_threads_and_raises():
    threads = set()

    def call(i):
        threads.add(threading.current_thread().name)
        return i * i
    assert parallel.run([lambda i=i: call(i) for i in range(5)], 2) == [0, 1, 4, 9, 16]
    assert all(name.startswith("sparrow-part") for name in threads)
    threads.clear()
    assert parallel.run([lambda i=i: call(i) for i in range(3)], 1) == [0, 1, 4]
    assert threads == {threading.current_thread().name}

    def fails():
        raise RuntimeError("part 1 failed")
    with pytest.raises(RuntimeError, match="part 1 failed"):
        parallel.run([lambda: 1, fails], 2)


def _scorer_config(world):
    cfg = default_config()
    cfg.model = tiny_model_config(vocab_size=512)
    cfg.data.dir = os.path.dirname(world["rule_ratings.train"])
    return cfg


@pytest.mark.parametrize("devices, rows", [(1, B), (8, 2 * B)])
def test_the_rule_scorer_in_parallel_part_calls_equals_one_call(world, tok, devices, rows):
    """On one device, and on eight (each part's rows still split over the devices); the part
    of shorter rows at a narrower width (the trainer's length groups)."""
    cfg = _scorer_config(world)
    cfg.train.batch_size = rows
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:devices])
    rules = shd.rules_from_config(cfg.mesh)
    width = 48
    shapes = stages.batch_shapes("rl", rows, width, trunk=(cfg.model.d_model, jax.numpy.float32))
    shardings = batch_shardings(shapes, mesh, rules)
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(5, width, rows))
    lengths[:rows // 2] = np.minimum(lengths[:rows // 2], 24)  # the short part fits 24
    arrays = {"tokens_BxL": rng.integers(8, 500, (rows, width)).astype(np.int32),
              "valid_BxL": np.arange(width)[None] < lengths[:, None]}
    params = hydra.init_params(cfg.model, jax.random.PRNGKey(1), roles=("rule_rm",))
    cfg.rl.rule_chunk = 1
    out = {}
    for parts, part_widths in ((1, None), (2, (24, width))):
        scorer = RewardScorer(cfg, tok, mesh, rules, shardings, (24, width), parts)
        assert scorer.parallel_calls == parts
        p_broken, trunks = scorer.p_broken_BxR(params, arrays, part_widths)
        assert [t.shape[1] for t in trunks] == list(part_widths or (width,))
        for trunk in trunks:
            assert trunk.sharding.is_equivalent_to(shardings["trunk_BxLxD"], trunk.ndim)
        out[parts] = (p_broken, [np.asarray(t) for t in trunks])
    assert out[1][0].shape == (rows, len(scorer.rule_ids))
    np.testing.assert_allclose(out[2][0], out[1][0], rtol=1e-6, atol=1e-7)
    (whole,), (short, long) = out[1][1], out[2][1]
    np.testing.assert_allclose(short, whole[:rows // 2, :24], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(long, whole[rows // 2:], rtol=1e-6, atol=1e-6)


def test_the_rule_scorer_compiles_nothing_after_its_first_call(world, tok):
    """Its first call compiles the scorer at every width (`rl.length_buckets`): a step whose
    parts run at widths not seen before compiles nothing."""
    cfg = _scorer_config(world)
    cfg.train.batch_size, cfg.rl.rule_chunk = B, 1
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    rules = shd.rules_from_config(cfg.mesh)
    widths = (32, 48)
    shapes = stages.batch_shapes("rl", B, widths[-1], trunk=(cfg.model.d_model, jax.numpy.float32))
    shardings = batch_shardings(shapes, mesh, rules)
    params = hydra.init_params(cfg.model, jax.random.PRNGKey(1), roles=("rule_rm",))
    scorer = RewardScorer(cfg, tok, mesh, rules, shardings, widths, 2)
    rng = np.random.default_rng(0)

    def score(width):
        arrays = {"tokens_BxL": rng.integers(8, 500, (B, width)).astype(np.int32),
                  "valid_BxL": np.arange(width)[None] < rng.integers(5, width, B)[:, None]}
        return scorer.p_broken_BxR(params, arrays, (width, width))
    score(widths[0])
    with compiled_programs() as compiled:
        _, trunks = score(widths[1])
    assert [t.shape[:2] for t in trunks] == [(B // 2, widths[1])] * 2
    assert not compiled, compiled


def _rl_cfg(parts, batch=16):
    cfg = default_config()
    cfg.rl.parallel_calls, cfg.train.batch_size = parts, batch
    return cfg


def test_auto_is_two_parts_on_one_cpu_device_and_one_elsewhere():
    one_device = shd.make_mesh(default_config().mesh, jax.devices()[:1])
    eight = shd.make_mesh(default_config().mesh, jax.devices()[:8])
    assert jax.default_backend() == "cpu"
    assert parallel.parallel_calls(_rl_cfg(0), one_device) == parallel.CPU_PARTS == 2
    assert parallel.parallel_calls(_rl_cfg(0), eight) == 1
    assert parallel.parallel_calls(_rl_cfg(0, batch=6), one_device) == 1  # 6 rows: no B/4 call
    assert parallel.parallel_calls(_rl_cfg(1), one_device) == 1
    assert parallel.parallel_calls(_rl_cfg(4), eight) == 4  # as asked, in one process
    accumulating = _rl_cfg(0)
    accumulating.train.grad_accum_steps = 2  # the update's parts take their gradients whole
    assert parallel.parallel_calls(accumulating, one_device) == 1
    # Sampling outside training (eval, chat, rating): unsharded params, any batch.
    assert parallel.sampling_parallel_calls(_rl_cfg(0, batch=6)) == 2
    assert parallel.sampling_parallel_calls(_rl_cfg(1)) == 1


def test_bad_parallel_calls_are_errors_naming_the_key():
    with pytest.raises(ConfigError, match="rl.parallel_calls=3.*train.batch_size=16"):
        parallel.parallel_calls(_rl_cfg(3))
    with pytest.raises(ConfigError, match="rl.parallel_calls"):
        validate(_rl_cfg(-1))
    accumulating = _rl_cfg(2)
    accumulating.train.grad_accum_steps = 2
    with pytest.raises(ConfigError, match="rl.parallel_calls=2 needs train.grad_accum_steps=1"):
        parallel.parallel_calls(accumulating)


def test_the_rule_scorer_keeps_one_call_when_parts_would_not_split_over_the_devices(world, tok):
    cfg = _scorer_config(world)
    cfg.train.batch_size = B  # parts of 4 rows on 8 devices
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:8])
    rules = shd.rules_from_config(cfg.mesh)
    shardings = batch_shardings(stages.batch_shapes("rl", B, 48), mesh, rules)
    assert RewardScorer(cfg, tok, mesh, rules, shardings, (48,), 2).parallel_calls == 1
