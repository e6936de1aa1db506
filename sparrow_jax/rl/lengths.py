"""Sequence lengths of the RL stage, and a tokenizer-free estimate of dialogue lengths.

Light on purpose (no JAX): the RL trainer, `sparrow aot` and the config tests all ask
"at which L does the RL update compile?" and must get the same answer.
"""
from __future__ import annotations

import math
from typing import Iterable

from sparrow_jax.config import ConfigError

# English text per token of a 32k SentencePiece vocabulary, the rule of thumb the pod
# configs' context budget uses (BUILD_NOTES, "RL lengths and decoding at pod size"). The
# toy tokenizer's 512 pieces give about 1.7 characters per token instead.
CHARS_PER_TOKEN = 4
ROUND_TO = 8  # L of an RL batch is a multiple of this


def estimate_tokens(text: str) -> int:
    """Tokens of `text` at CHARS_PER_TOKEN characters each, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_rendered_tokens(texts: Iterable[str], open_role: bool = False) -> int:
    """Tokens of `render(turns)`: bos, then per turn its role token, text and eot, then the
    open role token if asked. `texts` are the turns' texts."""
    return 1 + sum(2 + estimate_tokens(t) for t in texts) + int(open_role)


# Text budgets per turn of a dialogue with evidence, in estimated tokens [ours]: a user
# turn of ~250 characters, a search query of ~120, a Search Result of a title line, a
# source line and a ~500-character fragment (docs/recipe.md section 2).
TURN_TEXT_TOKENS = {"user": 64, "search_query": 32, "search_result": 160}


def agent_prompt_tokens(preamble_tokens: int, agent_turn: int, agent_tokens: int) -> int:
    """Tokens of the prompt the sampler gets for agent turn `agent_turn` (1-based) when every
    turn searches: the rendered preamble (bos included), the earlier exchanges (user, query,
    result, an agent turn of role + `agent_tokens`), this exchange's user, query and result,
    and the open role token."""
    asked = sum(2 + n for n in TURN_TEXT_TOKENS.values())  # role + text + eot each
    return preamble_tokens + (agent_turn - 1) * (asked + 1 + agent_tokens) + asked + 1


def max_rollout_len(rl) -> int:
    """The longest rollout sequence: the Sparrow prompt, its sampled text, an eot
    (`RolloutConfig.max_seq_len` for the same `rl` section)."""
    return int(rl.max_prompt_len) + int(rl.max_new_tokens) + 1


def sequence_length(cfg) -> int:
    """L of an RL training batch: the longest rollout sequence, rounded up to ROUND_TO.

    Raises ConfigError naming the keys if it exceeds model.max_len.
    """
    longest = max_rollout_len(cfg.rl)
    length = -(-longest // ROUND_TO) * ROUND_TO
    if length > cfg.model.max_len:
        raise ConfigError(
            f"rl.max_prompt_len + rl.max_new_tokens + 1 = {longest} "
            f"(padded to {length}) exceeds model.max_len={cfg.model.max_len}")
    return length


def bucket_widths(cfg) -> tuple[int, ...]:
    """The widths an RL batch may run at, narrowest first, ending with `sequence_length(cfg)`:
    each fraction f of `rl.length_buckets` gives f * L rounded up to ROUND_TO. Every width is
    one compiled rule scorer and one compiled update, both made before the first step."""
    full = sequence_length(cfg)
    widths = {full}
    for fraction in cfg.rl.length_buckets:  # in (0, 1): config validation checks
        widths.add(min(full, -(-math.ceil(float(fraction) * full) // ROUND_TO) * ROUND_TO))
    return tuple(sorted(widths))


def prompt_widths(rl) -> tuple[int, ...]:
    """The prompt widths a rollout's sampler call may run at, narrowest first, ending with
    `rl.max_prompt_len`: each fraction f of `rl.prompt_buckets` gives f * max_prompt_len rounded
    up to ROUND_TO. A call runs at the narrowest holding its longest prompt; each width is one
    more compile of each sampler program (`rollout.compile_prompt_widths`)."""
    full = int(rl.max_prompt_len)
    widths = {full}
    for fraction in rl.get("prompt_buckets", ()):  # in (0, 1): config validation checks
        widths.add(min(full, -(-math.ceil(float(fraction) * full) // ROUND_TO) * ROUND_TO))
    return tuple(sorted(widths))


def bucket_for(longest: int, widths: tuple[int, ...]) -> int:
    """The narrowest of `widths` (ascending) that holds a sequence of `longest` tokens.
    Raises ValueError if none does."""
    for width in widths:
        if longest <= width:
            return width
    raise ValueError(f"a sequence of {longest} tokens is longer than the widest batch, {widths[-1]}")
