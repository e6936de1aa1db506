"""Narrower prompt widths for the rollout's sampler calls (`rl.prompt_buckets`): a call runs
at the narrowest width that holds its prompts and draws the full width's tokens; every width
compiles before a run needs it; the key is checked."""
import dataclasses

import jax
import pytest

from compile_events import compiled_programs
from rl_helpers import assert_same_rollouts, contexts_from, make_env, prompt_shapes_per_call
from test_rollout import EchoEngine
from sparrow_jax.config import ConfigError, default_config, validate
from sparrow_jax.dialogue.turns import Role, Turn
from sparrow_jax.rl import lengths
from sparrow_jax.rl.rollout import RolloutConfig, rollout
from sparrow_jax.rl.sampler_calls import compile_prompt_widths

B = 8
FULL, WIDTHS = 160, (40, 80)


def _mixed_contexts(prompts):
    """B contexts: even rows a fresh prompt (under 40 tokens), odd rows that prompt after two
    earlier exchanges (longer than 40)."""
    contexts = []
    for row, context in enumerate(contexts_from(prompts, B)):
        if row % 2:
            earlier = (*prompts[B + row].context, Turn(Role.AGENT, "a b c d e f g h i j k l"),
                       *prompts[2 * B + row].context, Turn(Role.AGENT, "m n o p q r s t"))
            context = (*earlier, *context)
        contexts.append(tuple(context))
    return contexts


@pytest.mark.parametrize("parts", [1, 2])
def test_a_rollout_at_narrower_prompt_widths_draws_the_full_widths_turns(
        params, model_cfg, tok, prompts, parts):
    full = dataclasses.replace(make_env(model_cfg, tok, EchoEngine(), "free",
                                        max_prompt_len=FULL), parallel_calls=parts)
    narrow = dataclasses.replace(full, config=dataclasses.replace(full.config,
                                                                  prompt_widths=WIDTHS))
    assert narrow.config.widths == (40, 80, FULL)
    rng = jax.random.PRNGKey(5)
    batches = (("fresh", contexts_from(prompts, B)), ("mixed", _mixed_contexts(prompts)))
    for kind, contexts in batches:
        one = rollout(full, params, contexts, rng)
        with prompt_shapes_per_call("sample_step") as step_shapes, \
                prompt_shapes_per_call("sample") as live_shapes:
            two = rollout(narrow, params, contexts, rng)
        assert_same_rollouts(one, two, kind)
        assert any(r.searched for r in two.rollouts), kind  # answers after evidence ran too
        assert len(step_shapes) == parts and live_shapes, kind
        assert all(width in narrow.config.widths for _, width in step_shapes + live_shapes)
        if kind == "fresh":  # every prompt is under 40 tokens: every speaker call runs at 40
            assert [width for _, width in step_shapes] == [40] * parts
        elif parts == 2:  # the shorter half of the prompts shares a call, at a narrower width
            # (the two calls run side by side: recorded in either order)
            narrower, wider = sorted(width for _, width in step_shapes)
            assert narrower < wider, step_shapes


def test_compiled_widths_leave_nothing_to_compile_in_a_rollout(params, model_cfg, tok, prompts):
    env = dataclasses.replace(make_env(model_cfg, tok, EchoEngine(), "free", max_prompt_len=96),
                              parallel_calls=2)
    env = dataclasses.replace(env, config=dataclasses.replace(env.config, prompt_widths=(24, 48)))
    compile_prompt_widths(env, params, B)
    with compiled_programs() as compiled:
        for seed, contexts in enumerate((contexts_from(prompts, B), _mixed_contexts(prompts))):
            with prompt_shapes_per_call("sample_step") as shapes:
                rollout(env, params, contexts, jax.random.PRNGKey(seed))
            assert shapes
    assert not [name for name in compiled if "sample" in name], compiled


def test_prompt_widths_from_the_config_and_bad_values():
    cfg = default_config()
    cfg.rl.max_prompt_len = 128
    assert lengths.prompt_widths(cfg.rl) == (128,)
    cfg.rl.prompt_buckets = (0.25, 0.5, 0.3)  # 0.3 * 128 = 38.4: rounded up to 40
    assert lengths.prompt_widths(cfg.rl) == (32, 40, 64, 128)
    assert RolloutConfig.from_rl_config(cfg.rl).widths == (32, 40, 64, 128)
    for bad in ((0.5, 1.0), (0,)):
        cfg.rl.prompt_buckets = bad
        with pytest.raises(ConfigError, match="rl.prompt_buckets"):
            validate(cfg)
    with pytest.raises(ValueError, match="prompt_widths"):
        RolloutConfig(max_prompt_len=64, prompt_widths=(96,))
