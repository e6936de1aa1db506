"""Shared fixtures for the evaluation tests: a tiny toy world, its tokenizer, and workdirs holding
untrained tiny checkpoints written the way `sparrow train` writes them (TrainState + meta config +
tokenizer asset), in the demo's layout ROOT/{sft, pref_rm, rule_rm, rl}."""
import os

import jax
import pytest

from tiny_models import tiny_config
from sparrow_jax.data.toyworld import ToyWorldConfig, generate
from sparrow_jax.dialogue.tokenizer import train_tokenizer
from sparrow_jax.model import hydra
from sparrow_jax.search import SearchResult
from sparrow_jax.train.checkpoints import Checkpointer
from sparrow_jax.train.optimizer import make_optimizer
from sparrow_jax.train.state import init_state

SMALL_WORLD = dict(n_entities=24, n_heldout=6, n_distractors=3, n_dialogues=60, n_preferences=10,
                   n_rule_ratings=40, n_prompts=40)
STAGE_ROLES = {"sft": ("policy",), "pref_rm": ("pref_rm",), "rule_rm": ("rule_rm",),
               "rl": ("policy", "value", "teacher", "pref_rm", "rule_rm")}


class FixedEngine:
    """Always finds the same document (so a test can rely on evidence being shown)."""

    def search(self, query, k=1):
        return [SearchResult("toy-doc", "Zorbel", "https://toywiki.org/Zorbel",
                             "Zorbel is a town in the country of Ulvania.", 1.0)][:k]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate(out, ToyWorldConfig(seed=0, **SMALL_WORLD))
    return str(out)


@pytest.fixture(scope="session")
def tok(world, tmp_path_factory):
    with open(os.path.join(world, "lm.txt"), encoding="utf-8") as f:
        texts = [t for t in f.read().split("\n\n") if t.strip()]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "t.model", vocab_size=512)


def make_config(world, tok, stage="sft", **model):
    """A full tiny config: short prompts and turns so sampling compiles and runs in seconds."""
    cfg = tiny_config(vocab_size=tok.vocab_size, max_len=64, **model)
    cfg.train.stage = stage
    cfg.train.seq_len = 96
    cfg.data.dir = world
    cfg.rl.max_prompt_len = 48
    cfg.rl.max_new_tokens = 6
    return cfg


def save_workdir(workdir, cfg, tok, params, step=1):
    """Write `params` (full hydra params) as `sparrow train` would for cfg.train.stage."""
    stage = cfg.train.stage
    optimizer, _ = make_optimizer(cfg.train, cfg.train.steps)
    state = init_state(params, stage, optimizer, jax.random.PRNGKey(0))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(step, state, meta={"config": cfg.to_dict()},
              assets={"tokenizer.model": tok.serialized_model}, force=True)
    ckpt.close()
    return workdir


def init_params(cfg, roles, seed=0):
    return hydra.init_params(cfg.model, jax.random.PRNGKey(seed), roles=roles)


@pytest.fixture(scope="session")
def root(world, tok, tmp_path_factory):
    """ROOT/{sft, pref_rm, rule_rm, rl}: one shared trunk (seed 0), as the recipe makes them."""
    root = tmp_path_factory.mktemp("runs")
    full = init_params(make_config(world, tok), STAGE_ROLES["rl"])
    for stage, roles in STAGE_ROLES.items():
        params = {k: full[k] for k in ("trunk",) + roles}
        save_workdir(str(root / stage), make_config(world, tok, stage), tok, params)
    return str(root)
