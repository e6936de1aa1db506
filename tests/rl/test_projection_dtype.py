"""rl.projection_dtype: the RL stage's forward-only calls (rollouts, reward scoring) feed the
weight projections bf16 inputs; float32 keeps the model's own arithmetic; auto measures."""
import os

import jax
import numpy as np
import pytest

from rl_helpers import contexts_from, make_env
from test_rollout import EchoEngine
from tiny_models import tiny_model_config
from sparrow_jax import sharding as shd
from sparrow_jax.config import ConfigError, default_config, validate
from sparrow_jax.model import hydra
from sparrow_jax.model.spec import ModelSpec
from sparrow_jax.rewards.rule_scoring import rule_violation_probs
from sparrow_jax.rl.reward_models import RewardScorer
from sparrow_jax.rl import projection
from sparrow_jax.rl.projection import inference_spec, resolve_projection_dtype
from sparrow_jax.rl.rollout import rollout
from sparrow_jax.train import stages
from sparrow_jax.train.step import batch_shardings

ROWS, WIDTH = 8, 48


def _config(world, projection_dtype):
    cfg = default_config()
    cfg.model = tiny_model_config(vocab_size=512)
    cfg.data.dir = os.path.dirname(world["rule_ratings.train"])
    cfg.train.batch_size, cfg.rl.rule_chunk = ROWS, 1
    cfg.rl.projection_dtype = projection_dtype
    return cfg


def test_the_reward_scorer_scores_in_the_configured_projection_dtype(world, tok):
    """The scorer as the RL trainer builds it equals `rule_violation_probs` under its spec:
    float32 is the model's own scorer, bfloat16 is not, and lies within bf16 rounding of it."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, WIDTH, ROWS)
    arrays = {"tokens_BxL": rng.integers(8, 500, (ROWS, WIDTH)).astype(np.int32),
              "valid_BxL": np.arange(WIDTH)[None] < lengths[:, None]}
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = _config(world, dtype)
        params = hydra.init_params(cfg.model, jax.random.PRNGKey(1), roles=("rule_rm",))
        mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
        rules = shd.rules_from_config(cfg.mesh)
        shapes = stages.batch_shapes("rl", ROWS, WIDTH, trunk=(cfg.model.d_model, np.float32))
        spec = inference_spec(cfg, resolve_projection_dtype(cfg))
        scorer = RewardScorer(cfg, tok, mesh, rules, batch_shardings(shapes, mesh, rules),
                              (WIDTH,), 1, spec)
        got, _ = scorer.p_broken_BxR(params, arrays)
        want = rule_violation_probs(params, spec, arrays["tokens_BxL"],
                                    arrays["valid_BxL"], scorer.rule_tokens_RxQ,
                                    scorer.rule_valid_RxQ, rule_chunk=1)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=dtype)
        out[dtype] = np.asarray(got)
    f32_cfg = _config(world, "float32")
    assert inference_spec(f32_cfg, "float32") == ModelSpec.of(f32_cfg.model)
    gap = np.abs(out["bfloat16"] - out["float32"])
    assert 0 < gap.max() < 0.02, gap.max()


def test_bf16_rollouts_sample_near_the_float32_policy(params, model_cfg, tok, prompts):
    """The same keys draw (nearly always) the same tokens, with log-probs within bf16 rounding."""
    f32_env = make_env(model_cfg, tok, EchoEngine(), "free", max_new_tokens=16)
    bf16_env = make_env(ModelSpec.of(model_cfg).with_projection_dtype("bfloat16"), tok,
                        EchoEngine(), "free", max_new_tokens=16)
    contexts, rng = contexts_from(prompts, ROWS), jax.random.PRNGKey(3)
    arrays = {name: rollout(env, params, contexts, rng).training_arrays()
              for name, env in (("f32", f32_env), ("bf16", bf16_env))}
    same_rows = [r for r in range(ROWS)
                 if np.array_equal(arrays["f32"]["tokens_BxL"][r], arrays["bf16"]["tokens_BxL"][r])]
    assert len(same_rows) >= ROWS // 2, same_rows
    mask = arrays["f32"]["sampled_mask_BxL"][same_rows] > 0
    gap = np.abs(arrays["bf16"]["behaviour_logprobs_BxL"][same_rows]
                 - arrays["f32"]["behaviour_logprobs_BxL"][same_rows])[mask]
    assert mask.sum() > 0 and 0 < gap.max() and gap.mean() < 0.01, (gap.mean(), gap.max())


def test_a_bad_projection_dtype_is_an_error_naming_the_key():
    cfg = default_config()
    cfg.rl.projection_dtype = "float16"
    with pytest.raises(ConfigError, match="rl.projection_dtype"):
        validate(cfg)


def test_auto_is_measured_kept_when_resumed_and_a_no_op_for_a_bf16_model(monkeypatch, caplog):
    cfg = default_config()
    cfg.model.compute_dtype = "float32"
    assert cfg.rl.projection_dtype == "auto"
    timings = {}
    monkeypatch.setattr(projection, "matmul_seconds", lambda spec: timings)
    timings.update(float32=1.0, bfloat16=0.5)  # 2x: worth it
    assert resolve_projection_dtype(cfg) == "bfloat16"
    timings.update(float32=1.0, bfloat16=0.9)  # 1.1x: not worth moving the numerics
    assert resolve_projection_dtype(cfg) == "float32"
    # A resumed run keeps what it began with; checkpoints from before the key used float32.
    assert resolve_projection_dtype(cfg, {"projection_dtype": "bfloat16"}) == "bfloat16"
    assert resolve_projection_dtype(cfg, {"rule_chunk": 1}) == "float32"
    cfg.rl.projection_dtype = "bfloat16"  # as configured, unmeasured
    timings.clear()
    assert resolve_projection_dtype(cfg) == "bfloat16"
    cfg.rl.projection_dtype = "float32"  # a resumed run keeps its own, and says so
    assert resolve_projection_dtype(cfg, {"projection_dtype": "bfloat16"}) == "bfloat16"
    assert "began with bfloat16" in caplog.text
    cfg.rl.projection_dtype, cfg.model.compute_dtype = "auto", "bfloat16"
    assert resolve_projection_dtype(cfg) == "bfloat16"
    assert inference_spec(cfg, "bfloat16") == ModelSpec.of(cfg.model)


def test_the_measurement_times_both_dtypes_on_this_backend():
    seconds = projection.matmul_seconds(ModelSpec.of(tiny_model_config()), repeats=3)
    assert set(seconds) == {"float32", "bfloat16"} and all(t > 0 for t in seconds.values())
