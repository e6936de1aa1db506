"""Shared fixtures for the RL tests: a small toy world, its tokenizer and search engine, a tiny model."""
import jax
import numpy as np
import pytest

from tiny_models import tiny_model_config
from sparrow_jax.data import schemas
from sparrow_jax.data.toyworld import ToyWorldConfig, generate
from sparrow_jax.dialogue.tokenizer import train_tokenizer
from sparrow_jax.model import hydra
from sparrow_jax.rl.rollout import Environment, RolloutConfig
from sparrow_jax.sampling.sampler import SamplingConfig
from sparrow_jax.search import make_engine

SMALL_WORLD = dict(n_entities=30, n_heldout=9, n_distractors=5, n_dialogues=100, n_preferences=10,
                   n_rule_ratings=10, n_prompts=60)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return generate(out, ToyWorldConfig(seed=0, **SMALL_WORLD))


@pytest.fixture(scope="session")
def tok(world, tmp_path_factory):
    with open(world["lm"], encoding="utf-8") as f:
        texts = [t for t in f.read().split("\n\n") if t.strip()]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "t.model", vocab_size=512)


@pytest.fixture(scope="session")
def engine(world):
    return make_engine("bm25", index_dir=world["search_index"])


@pytest.fixture(scope="session")
def prompts(world):
    return list(schemas.read_jsonl(world["prompts.train"]))


@pytest.fixture(scope="session")
def model_cfg(tok):
    return tiny_model_config(vocab_size=tok.vocab_size, max_len=64, init_std=0.1)


@pytest.fixture(scope="session")
def params(model_cfg):
    return hydra.init_params(model_cfg, jax.random.PRNGKey(0), ("policy",))


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


def contexts_from(prompts, n):
    return [p.context for p in prompts[:n]]
