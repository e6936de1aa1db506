import ml_collections
import pytest

from sparrow_jax import config as config_lib


def test_tiny_config_validates():
    cfg = config_lib.load_experiment("experiments/tiny_cpu.py:sft")
    assert cfg.train.stage == "sft"


def test_unknown_key_in_experiment_is_named():
    cfg = config_lib.default_config()
    cfg.model.n_hedas = 3  # typo a user might make
    with pytest.raises(config_lib.ConfigError, match="model.n_hedas"):
        config_lib.validate(cfg)


def test_unknown_override_is_named():
    cfg = config_lib.default_config()
    with pytest.raises(config_lib.ConfigError, match="train.learnin_rate"):
        config_lib.apply_overrides(cfg, ["--config.train.learnin_rate=0.1"])


def test_override_parses_type():
    cfg = config_lib.apply_overrides(config_lib.default_config(),
                                     ["--config.train.learning_rate=0.5", "--config.model.n_layers=6"])
    assert cfg.train.learning_rate == 0.5 and cfg.model.n_layers == 6


def test_heads_must_divide_d_model():
    cfg = config_lib.default_config()
    cfg.model.n_heads = 5
    with pytest.raises(config_lib.ConfigError, match="model.n_heads"):
        config_lib.validate(cfg)


def test_mesh_must_divide_devices():
    with pytest.raises(config_lib.ConfigError, match="mesh.shape"):
        config_lib.resolve_mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
    assert config_lib.resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == {
        "data": 2, "fsdp": 2, "tensor": 2}


def test_wrong_type_is_named():
    raw = config_lib.default_config().to_dict()
    raw["train"]["steps"] = "many"
    cfg = ml_collections.ConfigDict(raw)
    with pytest.raises(config_lib.ConfigError, match="train.steps"):
        config_lib.validate(cfg)


def test_70b_config_validates():
    cfg = config_lib.load_experiment("experiments/sparrow_70b.py")
    assert cfg.model.n_layers == 80 and cfg.model.n_frozen_layers == 64


def test_negative_rule_chunk_is_named():
    cfg = config_lib.default_config()
    cfg.rl.rule_chunk = -1
    with pytest.raises(config_lib.ConfigError, match="rl.rule_chunk"):
        config_lib.validate(cfg)


def test_negative_causal_block_is_named():
    cfg = config_lib.default_config()
    cfg.model.causal_block = -64
    with pytest.raises(config_lib.ConfigError, match="model.causal_block"):
        config_lib.validate(cfg)
