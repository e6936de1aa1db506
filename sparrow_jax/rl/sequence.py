"""Host-side token sequences for RL: dialogues as blocks of whole turns, cut from the left, assembled.

A sequence has `render`'s layout, `[bos] ([role] text... [eot])* [open role]?`, but each turn is kept as a
`Block` so that turns the policy sampled keep their SAMPLED token ids (decoding and re-encoding text need
not give back the same ids) and know which of their tokens were sampled and with what log-prob.

Masks of an assembled sequence (L tokens):
  policy_mask_L:  the role token, text and eot of NEW policy turns (agent, search query) — the same tokens
                  `render(..., loss_from_turn=len(context)).loss_mask` marks; never context, user or
                  search-result tokens.
  sampled_mask_L: the tokens the policy actually drew: text, eot if it emitted one, and the role token when
                  the speaker was sampled (`free` evidence mode). Subset of policy_mask_L.
  behaviour_logprobs_L: float32 log-probs of the sampled tokens under the sampling policy (temperature-1,
                  full vocabulary, as `sample` reports them), 0 elsewhere.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from sparrow_jax.dialogue.tokenizer import Tokenizer
from sparrow_jax.dialogue.turns import POLICY_ROLES, ROLE_INDEX, Role, Turn


@dataclasses.dataclass(frozen=True)
class Block:
    """One turn: [role] text_ids [eot].

    new: written in this step (by the policy or the environment), as opposed to the given context.
    sampled_text: text_ids came from the sampler. text_logprobs: one per text id (sampled only).
    eot_logprob: the eot's log-prob if the sampler emitted it, else None (an over-length turn is closed
      with an eot the policy never drew). role_logprob: the role token's log-prob if it was sampled.
    head_cut: the turn's role token is followed by the TAIL of its text (left cut inside the turn).
    """
    role: Role
    text_ids: tuple[int, ...]
    new: bool = False
    sampled_text: bool = False
    text_logprobs: tuple[float, ...] = ()
    eot_logprob: float | None = None
    role_logprob: float | None = None
    head_cut: bool = False

    def __len__(self) -> int:
        return len(self.text_ids) + 2


def context_blocks(turns: Sequence[Turn], tokenizer: Tokenizer) -> list[Block]:
    """Given turns (not new, nothing sampled): one Block each, text encoded as `render` does."""
    return [Block(Role(t.role), tuple(tokenizer.encode_turn(t.text))) for t in turns]


def cut_left(blocks: Sequence[Block], budget: int) -> tuple[list[Block], bool]:
    """Keep the longest suffix of WHOLE blocks whose tokens fit in `budget` (bos and any open role token
    not included). If even the final block does not fit, keep its role token and the tail of its text and
    eot (as `render.truncate_left`). Returns (blocks, was_cut). Raises ValueError if budget < 2."""
    if budget < 2:
        raise ValueError(f"a budget of {budget} tokens cannot hold a role token and an eot")
    total = sum(len(b) for b in blocks)
    if total <= budget:
        return list(blocks), False
    kept: list[Block] = []
    used = 0
    for block in reversed(blocks):
        if used + len(block) > budget:
            break
        kept.insert(0, block)
        used += len(block)
    if not kept:  # the final block alone is too long: role token + tail of (text, eot)
        last = blocks[-1]
        n_text = budget - 2
        tail = last.text_ids[len(last.text_ids) - n_text:] if n_text else ()
        logprobs = last.text_logprobs[len(last.text_logprobs) - n_text:] if last.text_logprobs and n_text \
            else ()
        kept = [dataclasses.replace(last, text_ids=tuple(tail), text_logprobs=tuple(logprobs),
                                    role_logprob=None, head_cut=True)]
    return kept, True


@dataclasses.dataclass(frozen=True)
class Assembled:
    """An assembled sequence (L tokens); see the module docstring for the masks.

    token_ids_L int32, role_ids_L int8 (ROLE_INDEX, -1 = bos), policy_mask_L bool, sampled_mask_L bool,
    behaviour_logprobs_L float32, turn_spans: (start, end) per block, role token .. eot inclusive.
    """
    token_ids_L: np.ndarray
    role_ids_L: np.ndarray
    policy_mask_L: np.ndarray
    sampled_mask_L: np.ndarray
    behaviour_logprobs_L: np.ndarray
    turn_spans: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return int(self.token_ids_L.shape[0])


def assemble(blocks: Sequence[Block], tokenizer: Tokenizer,
             open_role: Role | None = None) -> Assembled:
    """[bos] + every block + the open role token (no mask) if given."""
    tokens, roles, policy, sampled, logprobs, spans = [tokenizer.bos_id], [-1], [False], [False], [0.0], []
    for block in blocks:
        start = len(tokens)
        n = len(block)
        on_policy = block.new and block.role in POLICY_ROLES
        tokens += [tokenizer.role_id(block.role), *block.text_ids, tokenizer.eot_id]
        roles += [ROLE_INDEX[block.role]] * n
        policy += [on_policy] * n
        text_lp = list(block.text_logprobs) if block.sampled_text else [0.0] * len(block.text_ids)
        sampled += ([block.role_logprob is not None] + [block.sampled_text] * len(block.text_ids)
                    + [block.eot_logprob is not None])
        logprobs += ([block.role_logprob or 0.0] + text_lp + [block.eot_logprob or 0.0])
        spans.append((start, start + n))
    if open_role is not None:
        tokens.append(tokenizer.role_id(open_role))
        roles.append(ROLE_INDEX[open_role])
        policy.append(False)
        sampled.append(False)
        logprobs.append(0.0)
    return Assembled(np.asarray(tokens, np.int32), np.asarray(roles, np.int8), np.asarray(policy, bool),
                     np.asarray(sampled, bool) & np.asarray(policy, bool),
                     np.asarray(logprobs, np.float32), tuple(spans))


def left_pad(sequences: Sequence[np.ndarray], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad 1-D int sequences to [B, width]: (tokens int32, valid bool). Raises if one is longer."""
    tokens = np.full((len(sequences), width), pad_id, np.int32)
    valid = np.zeros((len(sequences), width), bool)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if n > width:
            raise ValueError(f"row {row}: {n} tokens do not fit a prompt width of {width}")
        tokens[row, width - n:] = seq
        valid[row, width - n:] = True
    return tokens, valid
