"""RL batches run at the narrowest width that holds their longest sequence
(`rl.length_buckets`, `rl.lengths.bucket_widths`): the rule scorer and the update at a
narrower width must give what the full width gives, and the widths come from the config."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_rl_read_slots import LENGTH, MAX_NEW, rollout_like_batch
from tiny_models import tiny_model_config
from sparrow_jax import sharding as shd
from sparrow_jax.config import ConfigError, default_config, load_experiment, validate
from sparrow_jax.rewards.rule_scoring import rule_violation_probs
from sparrow_jax.rl import lengths
from sparrow_jax.rl.update import compile_updates
from sparrow_jax.train import stages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READ_LEN = 2 * (MAX_NEW + 2) + 1
RULE_TOKENS = np.asarray([[5, 6, 7, 0], [8, 9, 0, 0]], np.int32)


def _rl_config(buckets=()):
    cfg = load_experiment(os.path.join(ROOT, "experiments", "tiny_cpu.py") + ":rl")
    cfg.rl.length_buckets = buckets
    return cfg


def test_widths_are_fractions_of_the_full_width_rounded_up():
    assert lengths.sequence_length(_rl_config()) == 184
    assert lengths.bucket_widths(_rl_config()) == (184,)
    assert lengths.bucket_widths(_rl_config((0.75,))) == (144, 184)  # 138 -> 144
    assert lengths.bucket_widths(_rl_config((0.75, 0.5, 0.76))) == (96, 144, 184)
    assert lengths.bucket_widths(_rl_config((0.99,))) == (184,)  # rounds up to the full width
    # What experiments/tiny_cpu.py runs.
    tiny = load_experiment(os.path.join(ROOT, "experiments", "tiny_cpu.py") + ":rl")
    assert lengths.bucket_widths(tiny) == (72, 144, 184)


def test_a_batch_runs_at_the_narrowest_width_holding_it():
    widths = (96, 144, 184)
    assert [lengths.bucket_for(n, widths) for n in (1, 96, 97, 144, 145, 184)] == \
        [96, 96, 144, 144, 184, 184]
    with pytest.raises(ValueError, match="185 tokens is longer than the widest batch, 184"):
        lengths.bucket_for(185, widths)


@pytest.mark.parametrize("bad", [(0.0,), (1.0,), (0.5, 1.5), ("half",)])
def test_fractions_outside_zero_one_name_the_key(bad):
    cfg = default_config()
    cfg.rl.length_buckets = bad
    with pytest.raises(ConfigError, match="rl.length_buckets"):
        validate(cfg)


def _trim(batch: dict, width: int) -> dict:
    return {k: (v[:, :width] if np.ndim(v) >= 2 else v) for k, v in batch.items()}


def test_scorer_and_update_at_a_narrower_width_equal_the_full_width():
    cfg = default_config()
    cfg.model = tiny_model_config()
    cfg.train.stage = "rl"
    batch = rollout_like_batch(cfg.model.vocab_size, seed=5)
    rows = batch["tokens_BxL"].shape[0]
    cfg.train.batch_size, cfg.train.warmup_steps = rows, 0  # no warmup: the first step moves
    longest = int(batch["valid_BxL"].sum(axis=1).max())
    narrow = -(-longest // 8) * 8
    assert narrow < LENGTH  # the narrow batch really drops padding
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    setup = stages.build_stage(cfg, mesh, "rl", seq_len=LENGTH, trunk_input=True,
                               log_unsharded=False, read_len=READ_LEN)
    state = setup.init_fn(jax.random.PRNGKey(0))
    update = compile_updates(cfg, mesh, setup, (narrow, LENGTH), state, parts=1)
    score = jax.jit(lambda p, t, v: rule_violation_probs(
        p, cfg.model, t, v, RULE_TOKENS, RULE_TOKENS > 0, return_trunk=True))
    out = {}
    for width in (LENGTH, narrow):
        b = _trim(batch, width)
        p_broken, trunk = score(state.frozen, b["tokens_BxL"], b["valid_BxL"])
        assert trunk.shape == (rows, width, cfg.model.d_model)
        fresh = setup.init_fn(jax.random.PRNGKey(0))  # a step donates its input state
        new_state, metrics = update(fresh, [(width, {**jax.tree.map(jnp.asarray, b),
                                                    "trunk_BxLxD": trunk})])
        out[width] = (np.asarray(p_broken), np.asarray(trunk), new_state, metrics)
    (p_full, trunk_full, state_full, m_full), (p_narrow, trunk_narrow, state_narrow, m_narrow) = \
        out[LENGTH], out[narrow]
    np.testing.assert_allclose(p_narrow, p_full, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(trunk_narrow, trunk_full[:, :narrow], rtol=1e-5, atol=1e-6)
    for name in m_full:
        np.testing.assert_allclose(float(m_narrow[name]), float(m_full[name]), rtol=1e-4,
                                   atol=1e-6, err_msg=name)
    moved = 0
    for a, b, start in zip(jax.tree.leaves(state_narrow.params), jax.tree.leaves(state_full.params),
                           jax.tree.leaves(setup.init_fn(jax.random.PRNGKey(0)).params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        moved += int(np.abs(np.asarray(b) - np.asarray(start)).max() > 0)
    assert moved  # the step trained something
