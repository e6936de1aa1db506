"""Which rules the RL reward scores (rl.rule_scope): the rated ones by default, as evaluation."""
import json
import os

import pytest

from sparrow_jax import sharding as shd
from sparrow_jax.config import ConfigError, default_config, validate
from sparrow_jax.dialogue.rules import load_rules
from sparrow_jax.rl.reward_models import RewardScorer
from sparrow_jax.train import stage_data, stages
from sparrow_jax.train.step import batch_shardings
from tiny_models import tiny_model_config


def _cfg(world, scope):
    cfg = default_config()
    cfg.model = tiny_model_config(vocab_size=512)
    cfg.data.dir = os.path.dirname(world["rule_ratings.train"])
    cfg.rl.rule_scope = scope
    return cfg


def test_rated_scope_scores_the_rules_the_rule_rm_saw_in_file_order(world, tok):
    with open(world["rule_ratings.train"], encoding="utf-8") as f:
        rated = {json.loads(line)["rule_id"] for line in f if line.strip()}
    every = [rule.id for rule in load_rules()]
    assert 0 < len(rated) < len(every)
    mesh = shd.make_mesh(default_config().mesh)
    rules = shd.rules_from_config(default_config().mesh)
    cfg = _cfg(world, "rated")
    shardings = batch_shardings(stages.batch_shapes("rl", cfg.train.batch_size, 64), mesh, rules)
    scorer = RewardScorer(cfg, tok, mesh, rules, shardings)
    assert scorer.rule_ids == tuple(r for r in every if r in rated)
    assert scorer.rule_tokens_RxQ.shape[0] == len(rated)
    assert RewardScorer(_cfg(world, "all"), tok, mesh, rules, shardings).rule_ids == tuple(every)


def test_rated_scope_without_ratings_file_scores_every_rule(tmp_path):
    cfg = default_config()
    cfg.data.dir = str(tmp_path)
    assert list(stage_data.rules_by_id(cfg, "rated")) == [r.id for r in load_rules()]
    with pytest.raises(ValueError, match="rule scope"):
        stage_data.rules_by_id(cfg, "some")


def test_unknown_rule_scope_is_a_config_error_naming_the_key():
    cfg = default_config()
    cfg.rl.rule_scope = "unrated"
    with pytest.raises(ConfigError, match="rl.rule_scope"):
        validate(cfg)
