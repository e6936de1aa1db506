"""Shared fixtures for the evaluation tests: a tiny toy world, its tokenizer, and workdirs holding
untrained tiny checkpoints written the way `sparrow train` writes them (TrainState + meta config +
tokenizer asset), in the demo's layout ROOT/{sft, pref_rm, rule_rm, rl}."""
import os

import pytest

from eval_helpers import STAGE_ROLES, init_params, make_config, save_workdir
from sparrow_jax.data.toyworld import ToyWorldConfig, generate
from sparrow_jax.dialogue.tokenizer import train_tokenizer

SMALL_WORLD = dict(n_entities=24, n_heldout=6, n_distractors=3, n_dialogues=60, n_preferences=10,
                   n_rule_ratings=40, n_prompts=40)


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


@pytest.fixture(scope="session")
def root(world, tok, tmp_path_factory):
    """ROOT/{sft, pref_rm, rule_rm, rl}: one shared trunk (seed 0), as the recipe makes them."""
    root = tmp_path_factory.mktemp("runs")
    full = init_params(make_config(world, tok), STAGE_ROLES["rl"])
    for stage, roles in STAGE_ROLES.items():
        params = {k: full[k] for k in ("trunk",) + roles}
        save_workdir(str(root / stage), make_config(world, tok, stage), tok, params)
    return str(root)
