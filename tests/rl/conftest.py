"""Shared fixtures for the RL tests: a small toy world, its tokenizer and search engine, a tiny model."""
import jax
import pytest

from tiny_models import tiny_model_config
from sparrow_jax.data import schemas
from sparrow_jax.data.toyworld import ToyWorldConfig, generate
from sparrow_jax.dialogue.tokenizer import train_tokenizer
from sparrow_jax.model import hydra
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
