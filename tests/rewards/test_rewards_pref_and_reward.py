"""Preference Elo read-out, the Elo normaliser and the per-turn reward vs NumPy."""
import json

import jax
import numpy as np
import pytest
from rewards_helpers import random_params, right_padded, tiny_model_cfg

from sparrow_jax.model import hydra
from sparrow_jax.rewards import reward as reward_lib
from sparrow_jax.rewards.pref_scoring import EloNormaliser, pref_elo


def test_pref_elo_is_forward_at_last_index():
    cfg = tiny_model_cfg()
    params = random_params(cfg, ("pref_rm",))
    tokens, valid = right_padded([9, 4, 6], 10, cfg.vocab_size, seed=5)
    last, start = np.array([8, 3, 2], np.int32), np.array([5, 1, 0], np.int32)
    got = jax.jit(lambda p, t, v, i, s: pref_elo(p, cfg, t, v, i, s))(params, tokens, valid, last,
                                                                       start)
    forward = jax.jit(lambda p, t, v: hydra.forward(p, cfg, t, valid_BxL=v, roles=("pref_rm",)))
    full = forward(params, tokens, valid)
    assert set(full) == {"pref_rm"}  # no likelihood term without model.pref_rm_likelihood
    assert got.shape == (3,) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(full["pref_rm"])[np.arange(3), last], atol=1e-6)
    assert np.ptp(np.asarray(got)) > 1e-4


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_pref_elo_with_likelihood_adds_the_scaled_mean_log_prob_of_the_final_turn():
    """Reference: the RM top run as an LM (its layers, final norm and unembed as a policy top),
    log-softmax in NumPy, the mean log-prob of the turn's tokens after its role token up to and
    including the eot, times the learnt scale, added to the Elo head at the eot."""
    cfg = tiny_model_cfg(pref_rm_likelihood=True)
    params = random_params(cfg, ("pref_rm",))
    params["pref_rm"]["likelihood_scale"] = np.float32(1.7)
    tokens, valid = right_padded([9, 4, 6], 10, cfg.vocab_size, seed=5)
    last, start = np.array([8, 3, 5], np.int32), np.array([5, 1, 5], np.int32)
    got = np.asarray(jax.jit(lambda p, t, v, i, s: pref_elo(p, cfg, t, v, i, s))(
        params, tokens, valid, last, start))

    head = np.asarray(hydra.forward(params, cfg, tokens, valid_BxL=valid,
                                    roles=("pref_rm",))["pref_rm"])
    rm_top = params["pref_rm"]
    as_lm = {"trunk": params["trunk"], "policy": {k: rm_top[k] for k in
                                                   ("layers", "final_norm", "unembed")}}
    logp = _log_softmax(np.asarray(hydra.forward(as_lm, cfg, tokens, valid_BxL=valid,
                                                 roles=("policy",))["policy"], np.float64))
    for row in range(3):
        slots = range(start[row], last[row])  # slot t predicts token t + 1
        mean = np.mean([logp[row, t, tokens[row, t + 1]] for t in slots]) if slots else 0.0
        np.testing.assert_allclose(got[row], head[row, last[row]] + 1.7 * mean, rtol=1e-5,
                                   atol=1e-5)
    assert got[2] == pytest.approx(head[2, 5], abs=1e-5)  # an empty span adds nothing


def test_normaliser_matches_numpy_and_round_trips_json():
    rng = np.random.default_rng(0)
    elo = rng.normal(3.0, 2.5, size=(7, 11))
    fitted = EloNormaliser.fit(elo)
    assert fitted.count == elo.size
    np.testing.assert_allclose([fitted.mean, fitted.std], [elo.mean(), elo.std()], rtol=1e-12)
    # Batches merged one at a time (uneven sizes, a mask) give the same statistics.
    streamed = EloNormaliser()
    for chunk in np.array_split(elo.ravel(), [3, 4, 40]):
        streamed = streamed.update(chunk)
    streamed = streamed.update(np.array([99.0, 99.0]), mask=np.array([False, False]))
    np.testing.assert_allclose([streamed.mean, streamed.std, streamed.count],
                               [fitted.mean, fitted.std, fitted.count], rtol=1e-12)
    x = rng.normal(size=5).astype(np.float32)
    np.testing.assert_allclose(fitted.normalise(x), (x - elo.mean()) / elo.std(), rtol=1e-5)
    # Under jit too (mean/std are Python floats closed over).
    np.testing.assert_allclose(jax.jit(fitted.normalise)(x), fitted.normalise(x), rtol=1e-6)
    restored = EloNormaliser.from_state(json.loads(json.dumps(fitted.state())))
    assert restored == fitted
    # Degenerate cases: nothing seen = identity; constant Elo = the std floor.
    np.testing.assert_allclose(EloNormaliser().normalise(x), x)
    constant = EloNormaliser.fit(np.full(4, 2.0), min_std=0.5)
    np.testing.assert_allclose(constant.normalise(np.array([3.0])), [2.0])


def _numpy_reward(elo, p, malformed, mean, std, aggregation, rule_weight, penalty, eps, mask):
    per_rule = 1 - p if aggregation == "mean_compliance" else np.log(1 - p + eps)
    n = mask.sum(-1)
    agg = np.where(n > 0, (per_rule * mask).sum(-1) / np.maximum(n, 1), 0.0)
    return (elo - mean) / std + rule_weight * agg - penalty * malformed, agg


@pytest.mark.parametrize("aggregation", reward_lib.AGGREGATIONS)
def test_turn_reward_components_match_numpy(aggregation):
    rng = np.random.default_rng(1)
    b, r = 6, 23
    elo = rng.normal(size=b).astype(np.float32)
    p = rng.uniform(size=(b, r)).astype(np.float32)
    p[0, :3] = [0.0, 1.0, 0.5]
    malformed = np.array([True, False, False, True, False, False])
    mask = rng.uniform(size=(b, r)) > 0.3
    mask[-1] = False  # a turn with no rule counted: rule term 0
    normaliser = EloNormaliser.fit(rng.normal(0.5, 2.0, size=100))
    out = jax.jit(lambda e, q, m: reward_lib.turn_reward(
        e, q, m, normaliser, aggregation=aggregation, rule_weight=0.7, eps=1e-6,
        rule_mask_BxR=mask))(elo, p, malformed)
    want, agg = _numpy_reward(elo.astype(np.float64), p.astype(np.float64), malformed,
                              normaliser.mean, normaliser.std, aggregation, 0.7, 2.0, 1e-6, mask)
    assert set(out) == {"reward", "elo", "elo_normalised", "rule_compliance", "rule_term",
                        "format_penalty", "malformed"}
    for value in out.values():
        assert value.shape == (b,) and value.dtype == np.float32
    np.testing.assert_allclose(out["reward"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["rule_compliance"], agg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["rule_term"], 0.7 * agg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["format_penalty"], 2.0 * malformed)
    assert out["rule_compliance"][-1] == 0.0
    np.testing.assert_allclose(out["reward"], out["elo_normalised"] + out["rule_term"]
                               - out["format_penalty"], atol=1e-6)


def test_turn_reward_defaults_jit_and_bad_aggregation():
    elo, p = np.array([0.3, -1.0], np.float32), np.array([[0.1, 0.2], [0.9, 0.0]], np.float32)
    out = jax.jit(lambda e, q, m: reward_lib.turn_reward(e, q, m))(elo, p, np.array([False, True]))
    want = elo + (1 - p).mean(-1) - np.array([0.0, reward_lib.DEFAULT_FORMAT_PENALTY])
    np.testing.assert_allclose(out["reward"], want, rtol=1e-6)
    assert reward_lib.DEFAULT_FORMAT_PENALTY == 2.0 and reward_lib.DEFAULT_RULE_WEIGHT == 1.0
    # Log compliance punishes one surely-broken rule much more than the mean does.
    sure = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    assert reward_lib.aggregate_rules(sure, "mean_compliance")[0] == pytest.approx(0.75)
    assert reward_lib.aggregate_rules(sure, "mean_log_compliance")[0] == pytest.approx(
        np.log(1e-6) / 4, rel=1e-4)
    with pytest.raises(ValueError, match="aggregation"):
        reward_lib.turn_reward(elo, p, np.array([False, False]), aggregation="max")
