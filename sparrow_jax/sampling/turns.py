"""Host side: sampled token ids -> `Turn`s, with malformed turns flagged.

A sampled row is the speaker's text followed by eot, then padding (`SampleOutput`). A turn is malformed
when it is empty (no text, or only whitespace), over length (no eot within max_new_tokens: the text is cut),
or holds a control id inside its text (the sampler masks them; only a custom `TokenIds` lets one through).
RL gives malformed turns a format penalty (docs/recipe.md section 6).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from sparrow_jax.dialogue.tokenizer import Tokenizer
from sparrow_jax.dialogue.turns import Role, Turn

EMPTY, OVER_LENGTH, CONTROL_TOKEN = "empty", "over_length", "control_token"


@dataclasses.dataclass(frozen=True)
class SampledTurn:
    """turn: the decoded Turn (control ids dropped from its text).
    text_ids: the text's token ids (eot and padding excluded).
    finished: the row emitted eot.
    malformed: None, or why the turn is malformed (EMPTY, OVER_LENGTH, CONTROL_TOKEN).
    """
    turn: Turn
    text_ids: tuple[int, ...]
    finished: bool
    malformed: str | None

    @property
    def ok(self) -> bool:
        return self.malformed is None


def sampled_turn(tokenizer: Tokenizer, role: Role | str, ids_N: Sequence[int],
                 valid_N: Sequence[bool] | None = None) -> SampledTurn:
    """One row: ids up to the first eot (or all valid ids if none) decoded as `role`'s turn."""
    ids = np.asarray(ids_N).astype(np.int64)
    if valid_N is not None:
        ids = ids[np.asarray(valid_N, bool)]
    ids = [int(i) for i in ids]
    finished = tokenizer.eot_id in ids
    if finished:
        ids = ids[:ids.index(tokenizer.eot_id)]
    else:  # without a valid mask, trailing padding is not part of the text
        while ids and ids[-1] == tokenizer.pad_id:
            ids.pop()
    text = tokenizer.decode_turn(ids)
    if not finished:
        malformed = OVER_LENGTH
    elif any(i in tokenizer.control_ids for i in ids):
        malformed = CONTROL_TOKEN
    elif not text.strip():
        malformed = EMPTY
    else:
        malformed = None
    return SampledTurn(Turn(Role(role), text), tuple(ids), finished, malformed)


def sampled_turns(tokenizer: Tokenizer, roles: Role | str | Sequence[Role | str], tokens_BxN,
                  token_valid_BxN=None) -> list[SampledTurn]:
    """Every row of a sample (e.g. `SampleOutput.tokens_BxN`, `.token_valid_BxN`) as a SampledTurn.

    `roles`: one role for all rows, or one per row (e.g. from `sample_step`'s role_index_B).
    """
    tokens = np.asarray(tokens_BxN)
    valid = None if token_valid_BxN is None else np.asarray(token_valid_BxN, bool)
    if isinstance(roles, (str, Role)):
        roles = [roles] * tokens.shape[0]
    if len(roles) != tokens.shape[0]:
        raise ValueError(f"{len(roles)} roles for {tokens.shape[0]} rows")
    return [sampled_turn(tokenizer, role, tokens[b], None if valid is None else valid[b])
            for b, role in enumerate(roles)]
