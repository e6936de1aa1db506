"""Tiny random models and ragged left-padded prompts for the sampling tests (float32 compute)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

import tiny_models
from sparrow_jax.model import ModelSpec, hydra
from sparrow_jax.sampling.sampler import TokenIds

# The id layout of a trained tokenizer: pad 0, bos 1, eos 2, unk 3, roles 4-7, eot 8, rule 9.
PAD, BOS, EOS, USER, AGENT, SEARCH_QUERY, SEARCH_RESULT, EOT, RULE = 0, 1, 2, 4, 5, 6, 7, 8, 9
CONTROL = (PAD, BOS, EOS, USER, AGENT, SEARCH_QUERY, SEARCH_RESULT, EOT, RULE)
IDS = TokenIds(eot_id=EOT, pad_id=PAD, banned_ids=tuple(i for i in CONTROL if i != EOT))


def tiny_model_cfg(**overrides):
    """~30k parameters: 1 frozen + 1 own layer; a large init_std makes the logits peaky."""
    return tiny_models.tiny_model_config(**{"vocab_size": 48, "init_std": 0.1, **overrides})


def tiny_params(cfg, seed=0, roles=("policy",)):
    return hydra.init_params(cfg, jax.random.PRNGKey(seed), roles)


def ragged_prompts(lengths, vocab, open_role=AGENT, end=None, seed=0):
    """Left-padded tokens int32 [B, P] and valid bool [B, P]: bos, random text ids, then `end`
    (default: the open role token)."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    tokens = np.full((len(lengths), width), PAD, np.int32)
    valid = np.zeros((len(lengths), width), bool)
    for row, n in enumerate(lengths):
        body = rng.integers(RULE + 1, vocab, size=max(n - 2, 0))
        seq = [BOS, *body, open_role if end is None else end][-n:]
        tokens[row, width - n:] = seq
        valid[row, width - n:] = True
    return tokens, valid


def boost(params, token_ids, amount=10.0):
    """Make `token_ids` dominate every policy logit: a huge constant in embedding dim 0 survives the
    (small, init_std 0.1) layers, so the final-normed state is about +sqrt(D) on dim 0, and
    unembed[0, token_ids] = amount gives those tokens a logit of about amount * sqrt(D)."""
    params = jax.tree.map(lambda x: x, params)
    params["trunk"] = dict(params["trunk"], embedding=params["trunk"]["embedding"].at[:, 0].set(100.0))
    unembed = params["policy"]["unembed"].at[0, np.asarray(token_ids)].set(amount)
    params["policy"] = dict(params["policy"], unembed=unembed)
    return params


def full_logprobs(params, cfg, prompt_tokens, prompt_valid, out):
    """log_softmax of a full forward over [prompt, sampled turn] at the sampled tokens: float32 [B, N]."""
    return _full_logprobs(params, ModelSpec.of(cfg), prompt_tokens, prompt_valid, out)


@functools.partial(jax.jit, static_argnums=1)
def _full_logprobs(params, cfg, prompt_tokens, prompt_valid, out):
    tokens = jnp.concatenate([prompt_tokens, out.tokens_BxN], axis=1)
    valid = jnp.concatenate([prompt_valid, out.token_valid_BxN], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    logits = hydra.forward(params, cfg, tokens, positions, valid, roles=("policy",))["policy"]
    width, n = prompt_tokens.shape[1], out.tokens_BxN.shape[1]
    logprobs = jax.nn.log_softmax(logits[:, width - 1:width - 1 + n], axis=-1)
    return jnp.take_along_axis(logprobs, out.tokens_BxN[..., None], axis=-1)[..., 0]
