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
    cfg.rl.rule_chunk = -2
    with pytest.raises(config_lib.ConfigError, match="rl.rule_chunk"):
        config_lib.validate(cfg)


def test_negative_causal_block_is_named():
    cfg = config_lib.default_config()
    cfg.model.causal_block = -64
    with pytest.raises(config_lib.ConfigError, match="model.causal_block"):
        config_lib.validate(cfg)


def _rl_config(**rl):
    cfg = config_lib.default_config()
    cfg.train.stage = "rl"
    for key, value in rl.items():
        cfg.rl[key] = value
    return cfg


@pytest.mark.parametrize("rl, key", [
    (dict(temperature=0.7), "rl.temperature"),
    (dict(top_p=0.9), "rl.top_p"),
    (dict(top_k=40), "rl.top_k"),
    (dict(evidence="free", role_temperature=0.5), "rl.role_temperature"),
])
def test_training_the_rl_stage_refuses_off_policy_sampling(rl, key):
    cfg = _rl_config(**rl)
    config_lib.validate(cfg)  # evaluation and chat may sample so
    with pytest.raises(config_lib.ConfigError, match=key):
        config_lib.validate(cfg, training=True)
    cfg.train.stage = "sft"  # another stage's run does not sample from cfg.rl
    config_lib.validate(cfg, training=True)


def test_rl_training_accepts_on_policy_sampling_and_a_deterministic_speaker():
    config_lib.validate(_rl_config(), training=True)
    config_lib.validate(_rl_config(evidence="choose", role_temperature=0.5), training=True)


def test_building_the_rl_update_refuses_off_policy_sampling():
    """`sparrow train` of the rl stage builds its update with stages.build_stage."""
    from sparrow_jax import sharding as shd
    from sparrow_jax.train import stages
    from tiny_models import tiny_config
    cfg = tiny_config()
    cfg.train.stage = "rl"
    cfg = config_lib.apply_overrides(cfg, ["--config.rl.top_k=50"])
    with pytest.raises(config_lib.ConfigError, match="rl.top_k"):
        stages.build_stage(cfg, shd.make_mesh(cfg.mesh), "rl", log_unsharded=False)


def test_evaluating_an_rl_checkpoint_may_override_the_sampling_knobs():
    """`sparrow eval --config.rl.temperature=0.7` on an rl workdir: the checkpoint's config
    (train.stage='rl') with the override is the agent's config."""
    import types
    from sparrow_jax.evaluation import agent
    stored = types.SimpleNamespace(config=_rl_config().to_dict(), workdir="runs/rl")
    cfg = agent._config(stored, None, ["--config.rl.temperature=0.7", "--config.rl.top_p=0.9"])
    assert cfg.train.stage == "rl" and cfg.rl.temperature == 0.7 and cfg.rl.top_p == 0.9
