"""Fixtures of the rating-app tests: a tiny toy world with its tokenizer, and an untrained tiny sft
checkpoint written as `sparrow train` writes it (made once per test session)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "evaluation"))

SMALL_WORLD = dict(n_entities=12, n_heldout=3, n_distractors=2, n_dialogues=20, n_preferences=8,
                   n_rule_ratings=16, n_prompts=8)


@pytest.fixture(scope="session")
def rating_world(tmp_path_factory):
    from sparrow_jax.data.toyworld import ToyWorldConfig, generate
    out = tmp_path_factory.mktemp("rating_world")
    generate(out, ToyWorldConfig(seed=0, **SMALL_WORLD))
    return str(out)


@pytest.fixture(scope="session")
def rating_tok(rating_world, tmp_path_factory):
    from sparrow_jax.dialogue.tokenizer import train_tokenizer
    with open(os.path.join(rating_world, "lm.txt"), encoding="utf-8") as f:
        texts = [t for t in f.read().split("\n\n") if t.strip()]
    return train_tokenizer(texts, tmp_path_factory.mktemp("rating_tok") / "t.model", vocab_size=384)


@pytest.fixture(scope="session")
def sft_workdir(rating_world, rating_tok, tmp_path_factory):
    from eval_helpers import STAGE_ROLES, init_params, make_config, save_workdir
    cfg = make_config(rating_world, rating_tok, "sft")
    cfg.data.num_candidates = 2
    workdir = str(tmp_path_factory.mktemp("rating_runs") / "sft")
    return save_workdir(workdir, cfg, rating_tok, init_params(cfg, STAGE_ROLES["sft"]))
