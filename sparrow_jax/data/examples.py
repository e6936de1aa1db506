"""Per-record transforms: one typed record -> one fixed-shape example of numpy arrays.

Pure functions, used by `pipelines.py` inside grain `map`s. Every stage's
example keys, shapes and dtypes are listed in `EXAMPLE_SPECS` (per example,
without the batch axis; the pipeline batches them and appends the shape
suffix, e.g. `tokens` with shape "L" becomes `tokens_BxL`). Shape letters:
B batch, L `seq_len`, K `num_candidates`, R `rule_len`.

Over-long dialogues are cut from the LEFT with `render.truncate_left` (whole
final turns are kept); each example says whether it was cut (`truncated`), and
the pipeline counts and logs the cuts. Nothing is dropped.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from sparrow_jax.data import schemas
from sparrow_jax.dialogue import render as render_lib
from sparrow_jax.dialogue.tokenizer import Tokenizer

# stage -> {key: (per-example shape letters, dtype)}; "" = scalar.
EXAMPLE_SPECS: dict[str, dict[str, tuple[str, type]]] = {
    "lm": {
        "tokens": ("L", np.int32), "segment_ids": ("L", np.int32), "positions": ("L", np.int32),
        "valid": ("L", bool), "loss_mask": ("L", bool),
    },
    "sft": {
        "tokens": ("L", np.int32), "positions": ("L", np.int32), "segment_ids": ("L", np.int32),
        "valid": ("L", bool), "loss_mask": ("L", bool), "role_ids": ("L", np.int8),
        "truncated": ("", bool), "record_index": ("", np.int32),
    },
    "pref_rm": {
        "tokens": ("KxL", np.int32), "positions": ("KxL", np.int32), "valid": ("KxL", bool),
        "last_index": ("K", np.int32), "turn_start": ("K", np.int32),
        "candidate_valid": ("K", bool), "chosen": ("", np.int32),
        "has_evidence": ("K", bool), "supported": ("K", bool), "supported_mask": ("K", bool),
        "plausible": ("K", bool), "plausible_mask": ("K", bool), "truncated": ("", bool),
        "record_index": ("", np.int32),
    },
    "rule_rm": {
        "tokens": ("L", np.int32), "positions": ("L", np.int32), "valid": ("L", bool),
        "rule_tokens": ("R", np.int32), "rule_positions": ("R", np.int32), "rule_valid": ("R", bool),
        "rule_last_index": ("", np.int32), "rule_index": ("", np.int32), "broken": ("", bool),
        "truncated": ("", bool), "record_index": ("", np.int32),
    },
    "prompts": {
        "tokens": ("L", np.int32), "positions": ("L", np.int32), "valid": ("L", bool),
        "length": ("", np.int32), "source": ("", np.int32), "rule_index": ("", np.int32),
        "truncated": ("", bool), "record_index": ("", np.int32),
    },
}
STAGES = tuple(EXAMPLE_SPECS)
# Packed sft rows (`pipelines.make_pipeline("sft", pack=True)`): several dialogues per row,
# positions restarting at each; a row's counts of dialogues and of left-cut dialogues.
PACKED_SFT_SPEC: dict[str, tuple[str, type]] = {
    "tokens": ("L", np.int32), "positions": ("L", np.int32), "segment_ids": ("L", np.int32),
    "valid": ("L", bool), "loss_mask": ("L", bool), "role_ids": ("L", np.int8),
    "num_segments": ("", np.int32), "num_truncated": ("", np.int32),
}
# Record kinds each stage reads. `lm` also reads plain strings (pipelines.read_text_documents).
STAGE_KINDS = {"lm": ("corpus", "dialogues"), "sft": ("dialogues",), "pref_rm": ("preferences",),
               "rule_rm": ("rule_ratings",), "prompts": ("prompts",)}


def _pad(values: np.ndarray, length: int, fill, left: bool = False) -> np.ndarray:
    """Pads a 1-D array to `length` on the right (or left); never cuts."""
    gap = length - values.shape[0]
    if gap < 0:
        raise ValueError(f"{values.shape[0]} values do not fit in length {length}")
    width = (gap, 0) if left else (0, gap)
    return np.pad(values, width, constant_values=fill)


def _sequence(rendered: render_lib.Rendered, seq_len: int, pad_id: int, left: bool = False) -> dict:
    """tokens / positions / valid [L] of a rendered dialogue that already fits."""
    n = len(rendered)
    return {
        "tokens": _pad(rendered.token_ids, seq_len, pad_id, left).astype(np.int32),
        "positions": _pad(np.arange(n, dtype=np.int32), seq_len, 0, left),
        "valid": _pad(np.ones(n, bool), seq_len, False, left),
    }


def _render_fitting(turns, tokenizer: Tokenizer, seq_len: int, record_id: str, **kwargs):
    rendered = render_lib.render(turns, tokenizer, **kwargs)
    try:
        return render_lib.truncate_left(rendered, seq_len)
    except ValueError as err:
        raise ValueError(f"record {record_id!r}: {err}") from None


def lm_tokens(record: str | schemas.CorpusDoc | schemas.DialogueRecord,
              tokenizer: Tokenizer) -> np.ndarray:
    """Unpacked LM tokens int32 [n]: plain text or a corpus document (title \\n text) as
    [bos] text [eos], or a dialogue rendered with its role tokens."""
    if isinstance(record, (str, schemas.CorpusDoc)):
        text = record if isinstance(record, str) else (
            f"{record.title}\n{record.text}" if record.title else record.text)
        ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
        return np.asarray(ids, dtype=np.int32)
    if isinstance(record, schemas.DialogueRecord):
        return render_lib.render(record.turns, tokenizer).token_ids.astype(np.int32)
    raise TypeError(f"lm stage reads text, corpus documents or dialogues, got {type(record).__name__}")


def sft_example(record: schemas.DialogueRecord, tokenizer: Tokenizer, seq_len: int) -> dict:
    """One dialogue per row, right-padded; segment_ids 1 on its tokens, 0 on padding."""
    rendered, cut = _render_fitting(record.turns, tokenizer, seq_len, record.id)
    example = _sequence(rendered, seq_len, tokenizer.pad_id)
    example["segment_ids"] = example["valid"].astype(np.int32)
    example["loss_mask"] = _pad(rendered.loss_mask, seq_len, False)
    example["role_ids"] = _pad(rendered.role_ids, seq_len, -1).astype(np.int8)
    example["truncated"] = np.bool_(cut)
    return example


def sft_segment(record: schemas.DialogueRecord, tokenizer: Tokenizer, seq_len: int) -> dict:
    """One dialogue, unpadded, for packing several into a row (`pipelines.make_pipeline(pack=
    True)`): tokens / loss_mask / role_ids [n] (n <= seq_len; role_ids shifted by +1 so
    that the packer's 0 padding decodes to -1) and truncated [n] (the cut flag, per token)."""
    rendered, cut = _render_fitting(record.turns, tokenizer, seq_len, record.id)
    n = len(rendered)
    return {"tokens": rendered.token_ids.astype(np.int32),
            "loss_mask": rendered.loss_mask.astype(bool),
            "role_ids_plus_one": (rendered.role_ids.astype(np.int32) + 1),
            "truncated": np.full(n, cut, bool)}


def pref_rm_example(record: schemas.PreferenceRecord, tokenizer: Tokenizer, seq_len: int,
                    num_candidates: int) -> dict:
    """Each candidate rendered after the context; `last_index` = its final agent turn's eot,
    `turn_start` = that turn's role token."""
    k = len(record.candidates)
    if k > num_candidates:
        raise ValueError(f"record {record.id!r}: {k} candidates but num_candidates={num_candidates}")
    rows, cut_any = [], False
    last_index, turn_start = np.zeros(num_candidates, np.int32), np.zeros(num_candidates, np.int32)
    for i, candidate in enumerate(record.candidates):
        rendered, cut = _render_fitting(record.context + candidate, tokenizer, seq_len, record.id)
        cut_any |= cut
        rows.append(_sequence(rendered, seq_len, tokenizer.pad_id))
        turn_start[i], end = rendered.turn_spans[-1]
        last_index[i] = end - 1
    empty = {"tokens": np.full(seq_len, tokenizer.pad_id, np.int32),
             "positions": np.zeros(seq_len, np.int32), "valid": np.zeros(seq_len, bool)}
    rows += [empty] * (num_candidates - k)
    example = {key: np.stack([row[key] for row in rows]) for key in empty}

    def labels(values):
        values = values if values is not None else (None,) * k
        value = _pad(np.array([bool(v) for v in values], bool), num_candidates, False)
        mask = _pad(np.array([v is not None for v in values], bool), num_candidates, False)
        return value, mask

    example["supported"], example["supported_mask"] = labels(record.supported)
    example["plausible"], example["plausible_mask"] = labels(record.plausible)
    example.update(
        last_index=last_index,
        turn_start=turn_start,
        candidate_valid=np.arange(num_candidates) < k,
        chosen=np.int32(record.chosen),
        has_evidence=_pad(np.array(record.has_evidence, bool), num_candidates, False),
        truncated=np.bool_(cut_any))
    return example


def rule_questions(rules: Mapping[str, str], tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """{rule_id: int32 [Q]} the rule question suffix of every rule, rendered once."""
    return {rule_id: render_lib.render_rule_question(text, tokenizer) for rule_id, text in rules.items()}


def rule_index_of(rule_ids: Sequence[str], rule_id: str | None, record_id: str) -> int:
    if rule_id is None:
        return -1
    try:
        return list(rule_ids).index(rule_id)
    except ValueError:
        raise ValueError(f"record {record_id!r}: unknown rule id {rule_id!r}") from None


def rule_rm_example(record: schemas.RuleRatingRecord, tokenizer: Tokenizer, seq_len: int,
                    rule_len: int, questions: Mapping[str, np.ndarray]) -> dict:
    """Dialogue [L] and rule question [R] as separate arrays, so the dialogue prefix is shared.

    The question's positions continue from the dialogue's length; the Yes/No logits
    are read at `rule_last_index` (the question's eot) of the suffix.
    """
    rendered, cut = _render_fitting(record.dialogue, tokenizer, seq_len, record.id)
    example = _sequence(rendered, seq_len, tokenizer.pad_id)
    index = rule_index_of(list(questions), record.rule_id, record.id)
    question = questions[record.rule_id]
    if question.shape[0] > rule_len:
        raise ValueError(f"rule {record.rule_id!r}: question has {question.shape[0]} tokens, "
                         f"more than rule_len={rule_len}")
    q = question.shape[0]
    example.update(
        rule_tokens=_pad(question, rule_len, tokenizer.pad_id).astype(np.int32),
        rule_positions=_pad(np.arange(len(rendered), len(rendered) + q, dtype=np.int32), rule_len, 0),
        rule_valid=_pad(np.ones(q, bool), rule_len, False),
        rule_last_index=np.int32(q - 1), rule_index=np.int32(index),
        broken=np.bool_(record.broken), truncated=np.bool_(cut))
    return example


def prompt_example(record: schemas.PromptRecord, tokenizer: Tokenizer, seq_len: int,
                   rule_ids: Sequence[str], pad_left: bool = True) -> dict:
    """A prompt's context; left-padded by default so every row ends where decoding starts."""
    rendered, cut = _render_fitting(record.context, tokenizer, seq_len, record.id)
    example = _sequence(rendered, seq_len, tokenizer.pad_id, left=pad_left)
    example.update(
        length=np.int32(len(rendered)),
        source=np.int32(schemas.PROMPT_SOURCES.index(record.source)),
        rule_index=np.int32(rule_index_of(rule_ids, record.rule_id, record.id)),
        truncated=np.bool_(cut))
    return example


def batch_key(stage: str, key: str) -> str:
    """`tokens` -> `tokens_BxL`: the name of an example key once batched ("sft_packed":
    PACKED_SFT_SPEC)."""
    spec = PACKED_SFT_SPEC if stage == "sft_packed" else EXAMPLE_SPECS[stage]
    shape = spec[key][0]
    return f"{key}_B" + (f"x{shape}" if shape else "")
