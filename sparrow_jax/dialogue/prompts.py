"""Dialogue prompts as data: `resources/prompts/<name>.json` = {"description", "preamble", "turns"}.

A prompt is returned as plain turns so it renders like any dialogue: the preamble becomes a leading USER
turn (no role of its own; USER turns never get a loss, and the policy conditions on it like any context),
followed by the example turns. Prompts are optional: prepend one with
`render(prompt + turns, tokenizer, loss_from_turn=len(prompt))` so the examples get no loss. Tiny models
(256-token contexts) should use "short" or no prompt; the "dpc" prompt alone is a few hundred tokens.
"""
from __future__ import annotations

import importlib.resources
import json
import os

from sparrow_jax.dialogue.turns import Dialogue, Role, Turn


def prompt_names() -> tuple[str, ...]:
    """Names of the packaged prompts (file stems under resources/prompts)."""
    directory = importlib.resources.files("sparrow_jax") / "resources" / "prompts"
    return tuple(sorted(entry.name[:-5] for entry in directory.iterdir() if entry.name.endswith(".json")))


def load_prompt(name_or_path: str | os.PathLike) -> Dialogue:
    """(Turn(USER, preamble), *example turns) from a packaged prompt name or a JSON file path.

    An empty preamble adds no leading turn. Raises ValueError naming the file on a malformed prompt and
    naming the known prompts on an unknown name.
    """
    text_path = os.fspath(name_or_path)
    if text_path.endswith(".json") or os.sep in text_path:
        where = text_path
        with open(text_path, encoding="utf-8") as f:
            content = f.read()
    else:
        if text_path not in prompt_names():
            raise ValueError(f"unknown prompt {text_path!r}; packaged prompts: {', '.join(prompt_names())}")
        resource = importlib.resources.files("sparrow_jax") / "resources" / "prompts" / f"{text_path}.json"
        where, content = str(resource), resource.read_text(encoding="utf-8")
    try:
        obj = json.loads(content)
        preamble = obj.get("preamble", "")
        if not isinstance(preamble, str):
            raise ValueError("'preamble' must be a string")
        turns = tuple(Turn.from_json(turn) for turn in obj.get("turns", []))
        if not all(isinstance(turn.text, str) for turn in turns):
            raise ValueError("every turn's 'text' must be a string")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{where}: malformed prompt: {e!r}") from None
    return ((Turn(Role.USER, preamble),) if preamble else ()) + turns
