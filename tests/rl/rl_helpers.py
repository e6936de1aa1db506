"""Helpers of the RL tests (a module of its own name: `conftest` is ambiguous across test folders)."""
import contextlib

import jax
import numpy as np

from sparrow_jax.rl.rollout import Environment, RolloutConfig
from sparrow_jax.sampling import sampler
from sparrow_jax.sampling.sampler import SamplingConfig


def boost(params, token_ids, amount):
    """Make `token_ids` dominate every policy logit: a huge embedding dim 0 survives the small layers, so
    unembed[0, token_ids] = amount adds about amount * sqrt(D) to their logits."""
    params = jax.tree.map(lambda x: x, params)
    params["trunk"] = dict(params["trunk"], embedding=params["trunk"]["embedding"].at[:, 0].set(100.0))
    unembed = params["policy"]["unembed"].at[0, np.asarray(token_ids)].set(amount)
    params["policy"] = dict(params["policy"], unembed=unembed)
    return params


def make_env(model_cfg, tok, engine, evidence="choose", max_new_tokens=8, max_prompt_len=160, **kw):
    config = RolloutConfig(evidence=evidence, max_prompt_len=max_prompt_len,
                           agent=SamplingConfig(max_new_tokens=max_new_tokens), **kw)
    return Environment(model_cfg, tok, engine, config)


def assert_same_rollouts(one, two, label=""):
    """Two RolloutBatches drew the same turns: equal training arrays but the behaviour
    log-probs and the role log-probs, which may differ in float rounding (1e-5)."""
    assert [r.new_turns for r in two.rollouts] == [r.new_turns for r in one.rollouts], label
    arrays_one, arrays_two = one.training_arrays(), two.training_arrays()
    for name, value in arrays_one.items():
        if name == "behaviour_logprobs_BxL":
            np.testing.assert_allclose(arrays_two[name], value, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(arrays_two[name], value, err_msg=name)
    np.testing.assert_allclose(two.role_logprobs_Bx2, one.role_logprobs_Bx2, atol=1e-5)


def contexts_from(prompts, n):
    return [p.context for p in prompts[:n]]


@contextlib.contextmanager
def prompt_shapes_per_call(name: str):
    """Yields a list that gets the prompts' (rows, width) of every `sampler.<name>` call made in
    the block (e.g. "sample", "sample_step"), in call order; the real function still runs."""
    shapes, real = [], getattr(sampler, name)

    def recording(params, model_cfg, tokens, *args, **kwargs):
        shapes.append(tuple(np.shape(tokens)))
        return real(params, model_cfg, tokens, *args, **kwargs)
    setattr(sampler, name, recording)
    try:
        yield shapes
    finally:
        setattr(sampler, name, real)
