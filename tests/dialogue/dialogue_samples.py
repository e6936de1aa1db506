"""Deterministic sample text for training toy tokenizers in tests."""
import random

from sparrow_jax.dialogue.turns import DEFAULT_DISPLAY_NAMES

_WORDS = ("the capital of river mountain is a what where when who how many people live in city country "
          "search query result sparrow user rule break did not please thanks answer question evidence "
          "tall long old founded year 1984 2023 42").split()


def sample_texts(n_lines: int = 2000, seed: int = 0) -> list[str]:
    """Deterministic pseudo-dialogue text (about 100 KB) mentioning every display name."""
    rng = random.Random(seed)
    names = list(DEFAULT_DISPLAY_NAMES.values())
    lines = []
    for i in range(n_lines):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        lines.append(f"{names[i % len(names)]}: {words.capitalize()}{rng.choice('.?!')}")
    return ["\n".join(lines[i:i + 20]) for i in range(0, len(lines), 20)]
