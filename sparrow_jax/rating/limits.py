"""Form parsing for the rating app, with the input limits: pure functions of the submitted fields.

Every parser raises `FormError` (a ValueError, answered with 400 and its message) on a missing or bad
field; nothing is clipped silently. Rater text is only ever the text of a User turn.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from sparrow_jax.data.jsonl import clean_text

MAX_REQUEST_BYTES = 64 * 1024   # whole request body (Flask MAX_CONTENT_LENGTH)
MAX_MESSAGE_CHARS = 2000        # one chat message of a probe
MAX_PROBE_TURNS = 40            # turns of a probe dialogue, agent turns included
MAX_TOKEN_CHARS = 200           # a sign-in token


class FormError(ValueError):
    """A form field that is missing, malformed or over its limit."""


def _field(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if value is None:
        raise FormError(f"missing field {name!r}")
    return value


def parse_message(form: Mapping[str, str]) -> str:
    """The chat message: 1..MAX_MESSAGE_CHARS characters after the boundary rule for typed text
    (`data.jsonl.clean_text`: control characters dropped, lone surrogates -> U+FFFD) and
    stripping, kept verbatim otherwise."""
    raw = _field(form, "message")
    if len(raw) > MAX_MESSAGE_CHARS:
        raise FormError(f"the message has {len(raw)} characters; at most {MAX_MESSAGE_CHARS}")
    text = clean_text(raw).strip()
    if not text:
        raise FormError("the message is empty")
    return text


def parse_token(form: Mapping[str, str]) -> str:
    token = _field(form, "token").strip()
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise FormError("a sign-in token is 1-200 characters")
    return token


def parse_comparison(form: Mapping[str, str], has_evidence: Sequence[bool]) -> tuple[int, list, list]:
    """(chosen: -1 for "none acceptable" or a candidate index, supported and plausible per candidate:
    True/False for a candidate with evidence, None without). Every candidate with evidence needs both."""
    n = len(has_evidence)
    raw = _field(form, "chosen")
    if raw == "none":
        chosen = -1
    else:
        try:
            chosen = int(raw)
        except ValueError:
            raise FormError(f"chosen must be a candidate number or 'none', got {raw[:20]!r}") from None
        if not 0 <= chosen < n:
            raise FormError(f"chosen must be 0..{n - 1} or 'none', got {chosen}")
    answers: dict[str, list] = {"supported": [], "plausible": []}
    for name, values in answers.items():
        for k, evidence in enumerate(has_evidence):
            if not evidence:
                values.append(None)
                continue
            value = _field(form, f"{name}_{k}")
            if value not in ("yes", "no"):
                raise FormError(f"{name}_{k} must be 'yes' or 'no'")
            values.append(value == "yes")
    return chosen, answers["supported"], answers["plausible"]


def parse_probe_rating(form: Mapping[str, str], getlist, dialogue: Sequence[dict], rule_id: str,
                       rule_ids: Sequence[str]) -> tuple[dict[int, str], dict[int, list[str]]]:
    """({agent turn index: verdict}, {agent turn index: other rules flagged}); every agent turn needs a
    verdict. `getlist(name)` returns every value of a repeated field (the flag checkboxes)."""
    verdicts, others = {}, {}
    known = set(rule_ids)
    for index, turn in enumerate(dialogue):
        if turn["role"] != "agent":
            continue
        verdict = _field(form, f"verdict_{index}")
        if verdict not in ("broken", "not_broken", "unsure"):
            raise FormError(f"verdict_{index} must be broken, not_broken or unsure")
        verdicts[index] = verdict
        flagged = sorted(set(getlist(f"other_{index}")))
        unknown = [r for r in flagged if r not in known or r == rule_id]
        if unknown:
            raise FormError(f"other_{index}: not another rule: {unknown[0][:40]!r}")
        others[index] = flagged
    if not verdicts:
        raise FormError("the probe has no agent turn to rate yet")
    return verdicts, others
