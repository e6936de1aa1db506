"""The RL sequence length: one function for the trainer and `sparrow aot`, and pod configs
whose RL context holds a Sparrow dialogue with evidence."""
import os

import pytest

from sparrow_jax.config import ConfigError, load_experiment, load_experiment_module
from sparrow_jax.dialogue.prompts import load_prompt
from sparrow_jax.rl import lengths
from sparrow_jax.rl.rollout import RolloutConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POD_VARIANTS = [f"{os.path.join(ROOT, 'experiments', name)}.py:{variant}"
                for name in ("sparrow_70b", "chinchilla_1b", "chinchilla_7b")
                for variant in sorted(load_experiment_module(
                    os.path.join(ROOT, "experiments", f"{name}.py")).MESHES)]


def test_trainer_uses_the_same_function():
    from sparrow_jax.rl import trainer
    assert trainer.sequence_length is lengths.sequence_length


@pytest.mark.parametrize("prompt,new", [(128, 48), (1536, 128), (7, 1), (1000, 23)])
def test_sequence_length_is_the_longest_rollout_rounded_up(prompt, new):
    cfg = load_experiment(os.path.join(ROOT, "experiments", "tiny_cpu.py") + ":rl")
    cfg.rl.max_prompt_len, cfg.rl.max_new_tokens, cfg.model.max_len = prompt, new, 4096
    longest = RolloutConfig.from_rl_config(cfg.rl).max_seq_len
    length = lengths.sequence_length(cfg)
    assert length % 8 == 0 and longest <= length < longest + 8


def test_too_long_for_the_model_names_the_keys():
    cfg = load_experiment(os.path.join(ROOT, "experiments", "tiny_cpu.py") + ":rl")
    cfg.rl.max_prompt_len = cfg.model.max_len
    with pytest.raises(ConfigError, match=r"rl.max_prompt_len \+ rl.max_new_tokens.*model.max_len"):
        lengths.sequence_length(cfg)


def test_estimates():
    assert lengths.estimate_tokens("") == 0 and lengths.estimate_tokens("abcde") == 2
    # bos; then role + text + eot per turn; the open role token
    assert lengths.estimate_rendered_tokens(["abcd", "abcdefgh"], open_role=True) == 1 + 3 + 4 + 1
    asked = sum(2 + n for n in lengths.TURN_TEXT_TOKENS.values())
    assert lengths.agent_prompt_tokens(10, 1, 100) == 10 + asked + 1
    assert lengths.agent_prompt_tokens(10, 2, 100) == 10 + 2 * asked + 101 + 1


@pytest.mark.parametrize("spec", POD_VARIANTS)
def test_pod_rl_context_holds_a_sparrow_dialogue(spec):
    cfg = load_experiment(spec)
    r = cfg.rl
    length = lengths.sequence_length(cfg)  # raises if model.max_len cannot hold it
    assert 1024 <= length <= cfg.model.max_len
    preamble = lengths.estimate_rendered_tokens([t.text for t in load_prompt("dpc")])
    assert 250 < preamble < 400  # the DPC prompt is "a few hundred tokens"
    # The last agent turn's prompt, every turn with evidence, fits without cutting.
    assert lengths.agent_prompt_tokens(preamble, r.max_turns, r.max_new_tokens) <= r.max_prompt_len
    assert r.max_turns >= 3 and r.max_new_tokens >= 64
    assert cfg.mesh.decode_logical_axis_rules  # a decode layout is chosen
