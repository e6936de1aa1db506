"""Next-speaker log-probs and role sampling equal a full forward's."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sampling_helpers import (AGENT, EOT, SEARCH_QUERY, USER, boost, ragged_prompts, tiny_model_cfg,
                              tiny_params)
from sparrow_jax.model import ModelSpec, hydra
from sparrow_jax.sampling import sampler

ROLE_IDS = (SEARCH_QUERY, AGENT)


def full_last_logprobs(params, cfg, tokens, valid):
    return np.asarray(_full_last_logprobs(params, ModelSpec.of(cfg), tokens, valid))


@functools.partial(jax.jit, static_argnums=1)
def _full_last_logprobs(params, cfg, tokens, valid):
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    logits = hydra.forward(params, cfg, jnp.asarray(tokens), positions, jnp.asarray(valid),
                           roles=("policy",))["policy"]
    return jax.nn.log_softmax(logits[:, -1], axis=-1)


def test_next_role_logprobs_equal_full_forward():
    cfg = tiny_model_cfg()
    params = tiny_params(cfg, seed=1)
    tokens, valid = ragged_prompts([6, 2, 4], cfg.vocab_size, end=EOT)
    got = sampler.next_role_logprobs(params, cfg, tokens, valid, ROLE_IDS)
    assert got.shape == (3, 2)
    want = full_last_logprobs(params, cfg, tokens, valid)[:, list(ROLE_IDS)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sample_role_restricted_and_greedy():
    cfg = tiny_model_cfg()
    params = tiny_params(cfg, seed=1)
    tokens, valid = ragged_prompts([6, 2, 4, 5] * 8, cfg.vocab_size, end=EOT)
    full = full_last_logprobs(params, cfg, tokens, valid)
    roles = (USER, SEARCH_QUERY, AGENT)
    greedy = sampler.sample_role(params, cfg, tokens, valid, roles, jax.random.PRNGKey(0), 0.0)
    want_index = full[:, list(roles)].argmax(-1)
    np.testing.assert_array_equal(greedy.index_B, want_index)
    np.testing.assert_array_equal(greedy.token_B, np.asarray(roles)[want_index])
    rows = np.arange(len(tokens))
    np.testing.assert_allclose(greedy.logprob_B, full[rows, greedy.token_B], rtol=1e-5)
    restricted = full[:, list(roles)] - jax.nn.logsumexp(full[:, list(roles)], axis=-1,
                                                         keepdims=True)
    np.testing.assert_allclose(greedy.restricted_logprob_B, restricted[rows, greedy.index_B],
                               rtol=1e-5, atol=1e-6)

    # The free choice only ever yields a role in the set, even when others dominate the logits.
    boosted = boost(params, [EOT, USER])
    drawn = sampler.sample_role(boosted, cfg, tokens, valid, ROLE_IDS, jax.random.PRNGKey(1))
    assert set(np.asarray(drawn.token_B).tolist()) <= set(ROLE_IDS)
    a = sampler.sample_role(params, cfg, tokens, valid, roles, jax.random.PRNGKey(2))
    b = sampler.sample_role(params, cfg, tokens, valid, roles, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a.token_B, b.token_B)
    assert len(set(np.asarray(a.token_B).tolist())) > 1  # random model: not always the same role
