"""The cached sampler draws exactly the tokens of the no-cache reference (same seed, float32)."""
import jax
import numpy as np
import pytest

from sampling_helpers import IDS, full_logprobs, ragged_prompts, tiny_model_cfg, tiny_params
from sparrow_jax.sampling import sampler
from sparrow_jax.sampling.sampler import SamplingConfig

LENGTHS = [7, 3, 5, 1]  # ragged, left-padded; the last row is only the open role token
CONFIGS = {
    "top_p_top_k": SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=20),
    "greedy": SamplingConfig(max_new_tokens=12, temperature=0.0),
    "plain_t07": SamplingConfig(max_new_tokens=12, temperature=0.7),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_equals_uncached(name):
    cfg = tiny_model_cfg()
    params = tiny_params(cfg)
    tokens, valid = ragged_prompts(LENGTHS, cfg.vocab_size)
    config = CONFIGS[name]
    for seed in (0, 1):
        rng = jax.random.PRNGKey(seed)
        cached = sampler.sample(params, cfg, tokens, valid, rng, config, IDS)
        reference = sampler.sample_uncached(params, cfg, tokens, valid, rng, config, IDS)
        for field in ("tokens_BxN", "token_valid_BxN", "lengths_B", "finished_B"):
            np.testing.assert_array_equal(getattr(cached, field), getattr(reference, field), field)
        np.testing.assert_allclose(cached.logprobs_BxN, reference.logprobs_BxN, rtol=1e-5, atol=1e-5)
        # logprobs: log_softmax of a full forward at the sampled tokens (0 past the end).
        want = np.where(cached.token_valid_BxN, full_logprobs(params, cfg, tokens, valid, cached), 0)
        np.testing.assert_allclose(cached.logprobs_BxN, want, rtol=1e-5, atol=1e-5)
    assert int(cached.lengths_B.sum()) > len(LENGTHS)  # not vacuous: rows generated text


def test_cached_equals_uncached_rotary_gated():
    cfg = tiny_model_cfg(position="rotary", mlp="gated_gelu")
    params = tiny_params(cfg, seed=3)
    tokens, valid = ragged_prompts(LENGTHS, cfg.vocab_size, seed=2)
    config = CONFIGS["top_p_top_k"]
    rng = jax.random.PRNGKey(5)
    cached = sampler.sample(params, cfg, tokens, valid, rng, config, IDS)
    reference = sampler.sample_uncached(params, cfg, tokens, valid, rng, config, IDS)
    np.testing.assert_array_equal(cached.tokens_BxN, reference.tokens_BxN)


def test_cached_equals_uncached_looped_layers():
    """tiny_cpu's layout: looped layers (a cache buffer per layer; the decode loop runs on
    per-layer weight slices, `hydra.per_layer_params`) and smeared keys, 2 + 2 layers."""
    cfg = tiny_model_cfg(scan_layers=False, smeared_keys=True, n_layers=4, n_frozen_layers=2)
    params = tiny_params(cfg, seed=4)
    tokens, valid = ragged_prompts(LENGTHS, cfg.vocab_size, seed=3)
    rng = jax.random.PRNGKey(6)
    cached = sampler.sample(params, cfg, tokens, valid, rng, CONFIGS["plain_t07"], IDS)
    reference = sampler.sample_uncached(params, cfg, tokens, valid, rng, CONFIGS["plain_t07"], IDS)
    np.testing.assert_array_equal(cached.tokens_BxN, reference.tokens_BxN)
    np.testing.assert_allclose(cached.logprobs_BxN, reference.logprobs_BxN, rtol=1e-5, atol=1e-5)
    assert int(cached.lengths_B.sum()) > len(LENGTHS)


def test_padding_does_not_change_a_row():
    """A row sampled alone equals the same row inside a wider left-padded batch."""
    cfg = tiny_model_cfg()
    params = tiny_params(cfg)
    tokens, valid = ragged_prompts(LENGTHS, cfg.vocab_size)
    config = CONFIGS["greedy"]
    batch = sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(0), config, IDS)
    row = 1
    n = LENGTHS[row]
    alone = sampler.sample(params, cfg, tokens[row:row + 1, -n:], valid[row:row + 1, -n:],
                           jax.random.PRNGKey(0), config, IDS)
    np.testing.assert_array_equal(alone.tokens_BxN[0], batch.tokens_BxN[row])


def test_compiles_once_per_shape():
    cfg = tiny_model_cfg()
    params = tiny_params(cfg)
    tokens, valid = ragged_prompts([4, 2], cfg.vocab_size)
    config = SamplingConfig(max_new_tokens=5)
    sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(0), config, IDS)
    before = sampler._sample_cached._cache_size()
    for seed in range(1, 4):
        other_tokens, other_valid = ragged_prompts([2, 4], cfg.vocab_size, seed=seed)
        sampler.sample(params, cfg, other_tokens, other_valid, jax.random.PRNGKey(seed), config, IDS)
    assert sampler._sample_cached._cache_size() == before
