"""The speaker choice and its turn from one prefill (`sampler.sample_step`) equal a full
forward's role log-probs and `sampler.sample` on the prompt with the chosen role appended."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sampling_helpers import (AGENT, EOT, IDS, SEARCH_QUERY, USER, boost, ragged_prompts,
                              tiny_model_cfg, tiny_params)
from sparrow_jax.model import ModelSpec, hydra
from sparrow_jax.sampling import sampler
from sparrow_jax.sampling.sampler import SamplingConfig

ROLE_IDS = (SEARCH_QUERY, AGENT)
KEYS = [jax.random.PRNGKey(i) for i in (7, 8, 9)]
CONFIGS = (SamplingConfig(max_new_tokens=10, temperature=1.0),
           SamplingConfig(max_new_tokens=10, temperature=0.7, top_k=20))


def full_last_logprobs(params, cfg, tokens, valid):
    return np.asarray(_full_last_logprobs(params, ModelSpec.of(cfg), tokens, valid))


@functools.partial(jax.jit, static_argnums=1)
def _full_last_logprobs(params, cfg, tokens, valid):
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    logits = hydra.forward(params, cfg, jnp.asarray(tokens), positions, jnp.asarray(valid),
                           roles=("policy",))["policy"]
    return jax.nn.log_softmax(logits[:, -1], axis=-1)


def _step(params, cfg, tokens, valid, choice, temperature=1.0, role_ids=ROLE_IDS):
    return sampler.sample_step(params, cfg, tokens, valid, role_ids, choice, KEYS, CONFIGS, IDS,
                               temperature)


def test_role_logprobs_and_choices_equal_a_full_forward():
    cfg = tiny_model_cfg()
    params = tiny_params(cfg, seed=1)
    tokens, valid = ragged_prompts([6, 2, 4, 5] * 8, cfg.vocab_size, end=EOT)
    full = full_last_logprobs(params, cfg, tokens, valid)[:, list(ROLE_IDS)]
    chosen = _step(params, cfg, tokens, valid, "choose")
    np.testing.assert_allclose(chosen.role_logprobs_Bx2, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(chosen.role_index_B, np.where(full[:, 0] > full[:, 1], 0, 1))
    greedy = _step(params, cfg, tokens, valid, "free", temperature=0.0)
    np.testing.assert_array_equal(greedy.role_index_B, full.argmax(-1))
    for choice, index in (("first", 0), ("second", 1)):
        assert (_step(params, cfg, tokens, valid, choice).role_index_B == index).all()
    # A free draw is seeded and varies across rows of a random model.
    a = _step(params, cfg, tokens, valid, "free")
    b = _step(params, cfg, tokens, valid, "free")
    np.testing.assert_array_equal(a.role_index_B, b.role_index_B)
    assert len(set(np.asarray(a.role_index_B).tolist())) == 2
    # Only the two roles are ever chosen, even when other tokens dominate the logits.
    boosted = _step(boost(params, [EOT, USER]), cfg, tokens, valid, "free")
    assert set(np.asarray(boosted.role_index_B).tolist()) <= {0, 1}


@pytest.mark.parametrize("choice", ["free", "first", "second"])
def test_turn_equals_sample_after_the_chosen_role_token(choice):
    """What the rollout did before one prefill served the speaker choice and the turn: a
    `sample` call per role on the prompt with that role token appended, all rows drawing
    from that role's key. Each row's turn is the call of its own role's."""
    cfg = tiny_model_cfg()
    params = tiny_params(cfg, seed=2)
    tokens, valid = ragged_prompts([6, 2, 4, 5, 3, 7, 1, 6], cfg.vocab_size, end=EOT)
    step = _step(params, cfg, tokens, valid, choice)
    index_B = np.asarray(step.role_index_B)
    for index, role_id in enumerate(ROLE_IDS):
        rows = index_B == index
        if not rows.any():
            continue
        with_role = np.concatenate([tokens, np.full((len(tokens), 1), role_id, np.int32)], 1)
        with_valid = np.concatenate([valid, np.ones((len(tokens), 1), bool)], 1)
        want = sampler.sample(params, cfg, with_role, with_valid, KEYS[1 + index], CONFIGS[index],
                              IDS)
        np.testing.assert_array_equal(step.turn.tokens_BxN[rows], want.tokens_BxN[rows])
        np.testing.assert_array_equal(step.turn.token_valid_BxN[rows], want.token_valid_BxN[rows])
        np.testing.assert_allclose(step.turn.logprobs_BxN[rows], want.logprobs_BxN[rows],
                                   rtol=1e-5, atol=1e-5)


def test_rows_that_are_not_live_sample_nothing():
    cfg = tiny_model_cfg()
    params = tiny_params(cfg, seed=3)
    tokens, valid = ragged_prompts([6, 2, 4, 5, 3, 7], cfg.vocab_size)
    live = np.array([True, False, True, False, False, True])
    config = SamplingConfig(max_new_tokens=9)
    everyone = sampler.sample(params, cfg, tokens, valid, KEYS[0], config, IDS)
    some = sampler.sample(params, cfg, tokens, valid, KEYS[0], config, IDS, live_B=live)
    np.testing.assert_array_equal(np.asarray(some.tokens_BxN)[live],
                                  np.asarray(everyone.tokens_BxN)[live])
    assert not np.asarray(some.token_valid_BxN)[~live].any()
    assert (np.asarray(some.lengths_B)[~live] == 0).all()


def test_bad_arguments_are_refused():
    cfg = tiny_model_cfg()
    params = tiny_params(cfg)
    tokens, valid = ragged_prompts([3, 2], cfg.vocab_size, end=EOT)
    with pytest.raises(ValueError, match="choice"):
        _step(params, cfg, tokens, valid, "maybe")
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampler.sample_step(params, cfg, tokens, valid, ROLE_IDS, "free", KEYS,
                            (SamplingConfig(max_new_tokens=4), SamplingConfig(max_new_tokens=5)),
                            IDS)
