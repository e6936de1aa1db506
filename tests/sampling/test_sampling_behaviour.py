"""Stopping at eot, padding, lengths, seeds, banned ids, top-k / top-p, argument checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sampling_helpers import (CONTROL, EOT, IDS, PAD, boost, ragged_prompts, tiny_model_cfg,
                              tiny_params)
from sparrow_jax.sampling import sampler
from sparrow_jax.sampling.sampler import SamplingConfig, TokenIds, sample_token

BANNED = [i for i in CONTROL if i != EOT]


@pytest.fixture(scope="module")
def model():
    cfg = tiny_model_cfg()
    return cfg, tiny_params(cfg)


def check_layout(out, n):
    """Valid prefix of `lengths`, pad after, eot exactly at the end of finished rows."""
    tokens, valid = np.asarray(out.tokens_BxN), np.asarray(out.token_valid_BxN)
    lengths, finished = np.asarray(out.lengths_B), np.asarray(out.finished_B)
    for b in range(tokens.shape[0]):
        assert valid[b].tolist() == [True] * lengths[b] + [False] * (n - lengths[b])
        assert (tokens[b, lengths[b]:] == PAD).all()
        text = tokens[b, :lengths[b] - 1] if finished[b] else tokens[b, :lengths[b]]
        assert not np.isin(text, CONTROL).any()
        if finished[b]:
            assert tokens[b, lengths[b] - 1] == EOT
        else:
            assert lengths[b] == n
    assert (np.asarray(out.logprobs_BxN)[~valid] == 0).all()
    assert (np.asarray(out.logprobs_BxN)[valid] <= 0).all()


def test_stops_at_eot_and_pads(model):
    cfg, params = model
    n = 40
    tokens, valid = ragged_prompts([9, 2, 5, 3] * 4, cfg.vocab_size)
    out = sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(0),
                         SamplingConfig(max_new_tokens=n), IDS)
    check_layout(out, n)
    finished = np.asarray(out.finished_B)
    assert finished.any() and not finished.all()  # both cases are exercised


def test_all_rows_stop_early():
    """eot made overwhelmingly likely: every turn is just eot; the loop stops after one step."""
    cfg = tiny_model_cfg()
    params = boost(tiny_params(cfg), [EOT])
    tokens, valid = ragged_prompts([4, 2, 3], cfg.vocab_size)
    out = sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(0),
                         SamplingConfig(max_new_tokens=6), IDS)
    check_layout(out, 6)
    assert np.asarray(out.lengths_B).tolist() == [1, 1, 1] and np.asarray(out.finished_B).all()
    assert (np.asarray(out.tokens_BxN)[:, 0] == EOT).all()


@pytest.mark.parametrize("config", [SamplingConfig(max_new_tokens=16, temperature=1.0),
                                    SamplingConfig(max_new_tokens=16, temperature=0.0)])
def test_boosted_control_ids_are_never_sampled(config):
    """Role/bos/pad/rule tokens get logits of about +50 and still never appear."""
    cfg = tiny_model_cfg()
    params = boost(tiny_params(cfg), BANNED)
    tokens, valid = ragged_prompts([4, 2, 3, 5], cfg.vocab_size)
    out = sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(1), config, IDS)
    check_layout(out, 16)
    # Not vacuous: without the ban they are what the model samples.
    open_ids = TokenIds(eot_id=EOT, pad_id=PAD)
    unbanned = sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(1), config, open_ids)
    assert np.isin(np.asarray(unbanned.tokens_BxN), BANNED).mean() > 0.9


def test_tiny_vocab_many_samples_never_control():
    """Vocab 16: text ids 10..15 only; 64 rows x 24 tokens never hold a control id but eot."""
    cfg = tiny_model_cfg(vocab_size=16)
    params = tiny_params(cfg, seed=4)
    tokens, valid = ragged_prompts([3, 5] * 32, cfg.vocab_size)
    out = sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(2),
                         SamplingConfig(max_new_tokens=24, temperature=2.0), IDS)
    check_layout(out, 24)
    assert int(out.lengths_B.sum()) > 64 * 3


def test_vocab_limit_is_never_sampled(model):
    cfg, params = model
    tokens, valid = ragged_prompts([4, 2], cfg.vocab_size)
    ids = TokenIds(EOT, PAD, IDS.banned_ids, vocab_limit=20)
    out = sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(3),
                         SamplingConfig(max_new_tokens=30, temperature=2.0), ids)
    assert np.asarray(out.tokens_BxN).max() < 20


def test_reproducible_per_seed(model):
    cfg, params = model
    tokens, valid = ragged_prompts([5, 3, 4], cfg.vocab_size)
    config = SamplingConfig(max_new_tokens=10, top_p=0.95)
    a, b, c = (sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(s), config, IDS)
               for s in (7, 7, 8))
    np.testing.assert_array_equal(a.tokens_BxN, b.tokens_BxN)
    np.testing.assert_array_equal(a.logprobs_BxN, b.logprobs_BxN)
    assert (np.asarray(a.tokens_BxN) != np.asarray(c.tokens_BxN)).any()


def test_top_k_1_is_greedy(model):
    cfg, params = model
    tokens, valid = ragged_prompts([6, 1, 4], cfg.vocab_size)
    greedy = sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(0),
                            SamplingConfig(max_new_tokens=10, temperature=0.0), IDS)
    top1 = sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(9),
                          SamplingConfig(max_new_tokens=10, temperature=1.3, top_k=1), IDS)
    np.testing.assert_array_equal(greedy.tokens_BxN, top1.tokens_BxN)
    np.testing.assert_allclose(greedy.logprobs_BxN, top1.logprobs_BxN, rtol=1e-6)


def test_sample_token_top_k_top_p_support():
    """Over many keys: top-k draws only from the k largest, top-p only from the nucleus."""
    logits = jnp.log(jnp.asarray([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                   0.4, 0.3, 0.2, 0.06, 0.04]]) + 1e-9)
    logits = jnp.tile(logits, (256, 1))
    ids = TokenIds(EOT, PAD, IDS.banned_ids)

    def support(config):
        drawn = jax.vmap(lambda k: sample_token(logits, k, config, ids))(
            jax.random.split(jax.random.PRNGKey(0), 8))
        return set(np.unique(np.asarray(drawn)).tolist())

    assert support(SamplingConfig(top_k=2)) == {10, 11}
    assert support(SamplingConfig(top_p=0.65)) == {10, 11}  # 0.4 < 0.65 <= 0.4 + 0.3
    assert support(SamplingConfig(top_p=0.4)) == {10}
    assert support(SamplingConfig(top_p=0.95)) == {10, 11, 12, 13}
    assert support(SamplingConfig(top_k=3, top_p=0.95)) == {10, 11, 12}
    assert support(SamplingConfig()) == {10, 11, 12, 13, 14}


def test_bad_arguments(model):
    cfg, params = model
    for bad in (dict(temperature=-1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
                dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)
    tokens, valid = ragged_prompts([4, 2], cfg.vocab_size)
    right_padded = valid[:, ::-1]
    with pytest.raises(ValueError, match="left-padded"):
        sampler.sample(params, cfg, tokens, right_padded, jax.random.PRNGKey(0),
                       SamplingConfig(max_new_tokens=2), IDS)
