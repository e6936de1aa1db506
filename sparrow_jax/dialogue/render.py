"""Dialogue <-> token ids, loss masks, rule questions and human-readable transcripts.

Token layout (ids from `Tokenizer`):
    dialogue = [bos] turn_1 ... turn_n [open role]?
    turn     = [role token] encode_turn(text) [eot]
    rule question (rule RM input, appended after a rendered dialogue) = [rule] encode_turn(rule + "\\n" + question) [eot]
`encode_turn` encodes the text with one leading space (as it reads after "Name:").
Role tokens are control ids that no text encodes to, so text can never forge a turn boundary.
Because the rule question comes after the dialogue, one dialogue prefix can be shared by every rule.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from sparrow_jax.dialogue.tokenizer import Tokenizer
from sparrow_jax.dialogue.turns import (DEFAULT_DISPLAY_NAMES, POLICY_ROLES, ROLE_INDEX, Dialogue, Role,
                                        Turn)

DEFAULT_RULE_QUESTION = f"Did {DEFAULT_DISPLAY_NAMES[Role.AGENT]} break the rule?"


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A rendered dialogue. L = number of tokens.

    token_ids:  int32 [L].
    role_ids:   int8 [L], `turns.ROLE_INDEX` of the role of the turn each token belongs to (its role token,
                text and eot); -1 for bos. The open-role token, if any, carries its role's index.
    loss_mask:  bool [L], True exactly on the role token, text and eot of policy turns (agent, search
                query); never on bos, user or search-result turns, or the open-role token.
    turn_spans: one half-open (start, end) per turn, covering its role token through its eot.
    open_role:  the role whose token ends the sequence (for a sampler to continue), or None.
    """
    token_ids: np.ndarray
    role_ids: np.ndarray
    loss_mask: np.ndarray
    turn_spans: tuple[tuple[int, int], ...]
    open_role: Role | None = None

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])


def render(turns: Sequence[Turn], tokenizer: Tokenizer, *, open_role: Role | str | None = None,
           loss_from_turn: int = 0) -> Rendered:
    """Renders turns as [bos] + ([role] text [eot])* + [open_role]?.

    `open_role` appends that role's token (no loss) so a sampler continues with that speaker's text.
    `loss_from_turn`: turns before this index get no loss (e.g. a prompt or an already-trained context).
    """
    token_ids = [tokenizer.bos_id]
    role_ids = [-1]
    loss_mask = [False]
    spans = []
    for index, turn in enumerate(turns):
        role = Role(turn.role)
        block = [tokenizer.role_id(role), *tokenizer.encode_turn(turn.text), tokenizer.eot_id]
        start = len(token_ids)
        spans.append((start, start + len(block)))
        token_ids.extend(block)
        role_ids.extend([ROLE_INDEX[role]] * len(block))
        loss_mask.extend([role in POLICY_ROLES and index >= loss_from_turn] * len(block))
    if open_role is not None:
        open_role = Role(open_role)
        token_ids.append(tokenizer.role_id(open_role))
        role_ids.append(ROLE_INDEX[open_role])
        loss_mask.append(False)
    return Rendered(
        token_ids=np.asarray(token_ids, dtype=np.int32),
        role_ids=np.asarray(role_ids, dtype=np.int8),
        loss_mask=np.asarray(loss_mask, dtype=bool),
        turn_spans=tuple(spans),
        open_role=open_role,
    )


def parse(token_ids: Sequence[int] | np.ndarray, tokenizer: Tokenizer, *,
          allow_open: bool = False) -> Dialogue:
    """Inverts `render`: int ids [L] -> Dialogue. Trailing pad ids are ignored.

    With `allow_open`, a last turn without eot (a sampler's unfinished turn, or a bare open-role token) is
    returned with the text so far; otherwise it is an error. Raises ValueError, naming the position, on a
    missing bos, a missing role token, a control id inside a turn, or an out-of-range id.
    """
    ids = np.asarray(token_ids)
    if ids.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {ids.shape}")
    ids = [int(i) for i in ids]
    while ids and ids[-1] == tokenizer.pad_id:
        ids.pop()
    if not ids or ids[0] != tokenizer.bos_id:
        first = tokenizer.id_to_piece(ids[0]) if ids else "nothing"
        raise ValueError(f"position 0: expected bos ({tokenizer.bos_id}), got {first}")
    control = tokenizer.control_ids
    turns = []
    pos = 1
    while pos < len(ids):
        role = tokenizer.role_of(ids[pos])
        if role is None:
            raise ValueError(f"position {pos}: expected a role token, got id {ids[pos]} "
                             f"({tokenizer.id_to_piece(ids[pos])})")
        end = pos + 1
        while end < len(ids) and ids[end] not in control:
            end += 1
        if end == len(ids):
            if not allow_open:
                raise ValueError(f"position {pos}: {role.value} turn has no end-of-turn token")
        elif ids[end] != tokenizer.eot_id:
            raise ValueError(f"position {end}: control token {tokenizer.id_to_piece(ids[end])} inside a "
                             f"{role.value} turn (expected text or eot)")
        turns.append(Turn(role, tokenizer.decode_turn(ids[pos + 1:end])))
        pos = end + 1
    return tuple(turns)


def render_rule_question(rule_text: str, tokenizer: Tokenizer,
                         question: str = DEFAULT_RULE_QUESTION) -> np.ndarray:
    """int32 [Q] = [rule] encode_turn(rule_text + "\\n" + question) [eot]; append after a rendered
    dialogue."""
    ids = [tokenizer.rule_id, *tokenizer.encode_turn(f"{rule_text}\n{question}"), tokenizer.eot_id]
    return np.asarray(ids, dtype=np.int32)


def truncate_left(rendered: Rendered, max_len: int) -> tuple[Rendered, bool]:
    """Keeps bos + the longest suffix of WHOLE turns (plus the open-role token) that fits in `max_len`.

    If even the final turn does not fit, keeps bos, that turn's role token and the tail of its text and
    eot (the text then starts mid-turn, possibly mid-character). Returns (rendered, was_cut); callers count
    cuts. Raises ValueError if `max_len` cannot hold bos, a role token and an eot (plus the open token).
    """
    length = len(rendered)
    if length <= max_len:
        return rendered, False
    open_len = int(rendered.open_role is not None)
    budget = max_len - 1 - open_len  # room for turns
    spans = rendered.turn_spans
    if budget < 2:
        raise ValueError(f"max_len {max_len} cannot hold bos, a role token and an eot"
                         + (" plus the open-role token" if open_len else ""))
    first_kept = len(spans)
    used = 0
    while first_kept > 0 and used + (spans[first_kept - 1][1] - spans[first_kept - 1][0]) <= budget:
        first_kept -= 1
        used += spans[first_kept][1] - spans[first_kept][0]
    if first_kept < len(spans):
        keep = np.arange(spans[first_kept][0], length)
        shift = spans[first_kept][0] - 1
        new_spans = tuple((s - shift, e - shift) for s, e in spans[first_kept:])
    else:  # the final turn alone is too long: its role token + the tail of its text and eot
        start, end = spans[-1]
        keep = np.concatenate([[start], np.arange(end - (budget - 1), length)])
        new_spans = ((1, 1 + budget),)
    index = np.concatenate([[0], keep])
    return Rendered(
        token_ids=rendered.token_ids[index],
        role_ids=rendered.role_ids[index],
        loss_mask=rendered.loss_mask[index],
        turn_spans=new_spans,
        open_role=rendered.open_role,
    ), True


# ---------------------------------------------------------------- human-readable transcripts
def to_text(turns: Sequence[Turn], display_names: Mapping[Role, str] = DEFAULT_DISPLAY_NAMES) -> str:
    """'User: ...\\nSparrow: ...': one "Name: text" block per turn, newline separated."""
    return "\n".join(f"{display_names[Role(turn.role)]}: {turn.text}" for turn in turns)


def from_text(text: str, display_names: Mapping[Role, str] = DEFAULT_DISPLAY_NAMES) -> Dialogue:
    """Parses a `to_text` transcript back into turns.

    A line starting with "Name:" (a display name) opens a turn (one space after the colon is dropped); any
    other line continues the previous turn. Lossy only for text containing a line that itself starts with
    a display name and a colon. Raises ValueError if the first line names no speaker.
    """
    by_name = sorted(((name, Role(role)) for role, name in display_names.items()),
                     key=lambda item: -len(item[0]))
    if len({name for name, _ in by_name}) != len(by_name):
        raise ValueError(f"display names must be distinct: {dict(display_names)}")
    turns: list[list] = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        for name, role in by_name:
            if line.startswith(name + ":"):
                body = line[len(name) + 1:]
                turns.append([role, body[1:] if body.startswith(" ") else body])
                break
        else:
            if not turns:
                names = ", ".join(name for name, _ in by_name)
                raise ValueError(f"line {line_number}: expected a speaker ({names}) followed by ':', "
                                 f"got {line[:40]!r}")
            turns[-1][1] += "\n" + line
    return tuple(Turn(role, body) for role, body in turns)
