"""grain input pipelines: records -> batches of numpy arrays for each training stage.

    source = tfds_builders.load_source(tfds_dir, "dialogues", "train")   # or a list of records
    batches = make_pipeline("sft", source, tokenizer, global_batch_size=8, seq_len=128, seed=0)
    batch = next(batches)            # {"tokens_BxL": int32[B, L], "loss_mask_BxL": bool[B, L], ...}
    state = batches.get_state()      # JSON-serialisable; batches.set_state(state) resumes exactly

Order of operations (grain `MapDataset`, so every step is index-addressable and
the iterator state is just a position): tag each record with its index in the
source, seeded shuffle, repeat (reshuffled every epoch), per-record transform
(`examples.py`), batch of the GLOBAL batch size, then keep this process's rows
(`rows`). The `lm` stage packs token streams into rows
(`ConcatThenSplitIterDataset`) before batching; packed sft packs per batch.

Every process builds the same global batches and keeps its rows, so a run's
batches do not depend on how many processes share it (2 processes x 2 devices
train exactly what 1 x 4 trains) and resume state is the same on every process.
The price: each process tokenises the whole global batch, not its 1/P (host
work, small next to a step of any model worth a pod).

Batch keys carry their shapes (`tokens_BxL`); `examples.EXAMPLE_SPECS` lists
them per stage, and docs/interfaces.md ("Data pipelines") documents them. B is
this process's rows of the global batch (all of them by default).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from sparrow_jax.data import examples
from sparrow_jax.dialogue.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class BatchIterator:
    """An iterator of batches with checkpointable state and a count of left-truncated examples.

    `get_state()` -> JSON-serialisable dict; `set_state(state)` resumes at the same element.
    `num_truncated` / `num_examples` count the examples of the batches handed out so far.
    """

    def __init__(self, dataset: grain.IterDataset, stage: str):
        self._iterator = iter(dataset)
        self.stage = stage
        self.num_truncated = 0
        self.num_examples = 0
        self._next_log = 1

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        if "num_segments_B" in batch:  # packed rows: several examples each
            self.num_examples += int(batch["num_segments_B"].sum())
            cuts = int(batch["num_truncated_B"].sum())
        else:
            self.num_examples += next(iter(batch.values())).shape[0]
            truncated = batch.get("truncated_B")
            cuts = 0 if truncated is None else int(truncated.sum())
        if cuts:
            self.num_truncated += cuts
            if self.num_truncated >= self._next_log:  # logs at 1, 2, 4, 8, ... cuts
                log.warning("%s: %d of %d examples so far were longer than seq_len and cut from "
                            "the left", self.stage, self.num_truncated, self.num_examples)
                while self._next_log <= self.num_truncated:
                    self._next_log *= 2
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._iterator.get_state(), "num_truncated": self.num_truncated,
                "num_examples": self.num_examples, "next_log": self._next_log}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._iterator.set_state(state["grain"])
        self.num_truncated = int(state["num_truncated"])
        self.num_examples = int(state["num_examples"])
        self._next_log = int(state["next_log"])


def _keep_rows(rows: slice | None):
    if rows is None:
        return lambda batch: batch
    return lambda batch: {key: value[rows] for key, value in batch.items()}


def _example_fn(stage: str, tokenizer: Tokenizer, seq_len: int, *, num_candidates: int,
                rule_len: int | None, rules: Mapping[str, str] | None, pad_prompts_left: bool):
    """record -> example dict (keys of EXAMPLE_SPECS[stage] minus record_index)."""
    if stage == "sft":
        return lambda record: examples.sft_example(record, tokenizer, seq_len)
    if stage == "pref_rm":
        return lambda record: examples.pref_rm_example(record, tokenizer, seq_len, num_candidates)
    if stage == "rule_rm":
        if not rules:
            raise ValueError("the rule_rm stage needs `rules` ({rule_id: rule text})")
        questions = examples.rule_questions(rules, tokenizer)
        if rule_len is None:  # the longest question, rounded up to a multiple of 16
            rule_len = -(-max(len(q) for q in questions.values()) // 16) * 16
        too_long = {rule_id: len(q) for rule_id, q in questions.items() if len(q) > rule_len}
        if too_long:  # fail before the first batch, not midway through an epoch
            raise ValueError(f"rule questions longer than rule_len={rule_len} tokens: {too_long}")
        return lambda record: examples.rule_rm_example(record, tokenizer, seq_len, rule_len, questions)
    if stage == "prompts":
        rule_ids = list(rules or ())
        return lambda record: examples.prompt_example(record, tokenizer, seq_len, rule_ids,
                                                      pad_left=pad_prompts_left)
    raise ValueError(f"unknown stage {stage!r}; expected one of {examples.STAGES}")


def _rename(stage: str):
    def rename(batch: dict) -> dict:
        return {examples.batch_key(stage, key): value for key, value in batch.items()}
    return rename


def _packed_lm_row(row: dict) -> dict:
    segment_ids = row["tokens_segment_ids"].astype(np.int32)
    positions = row["tokens_positions"].astype(np.int32)
    valid = segment_ids > 0
    # The first token of a segment (or of a row continuing a cut document) has no
    # predecessor in the row, so nothing in the row predicts it.
    return {"tokens": row["tokens"].astype(np.int32), "segment_ids": segment_ids,
            "positions": positions, "valid": valid, "loss_mask": valid & (positions > 0)}


def _packed_sft_row(row: dict) -> dict:
    segment_ids = row["tokens_segment_ids"].astype(np.int32)
    valid = segment_ids > 0
    starts = valid & (row["tokens_positions"] == 0)
    return {"tokens": row["tokens"].astype(np.int32),
            "positions": row["tokens_positions"].astype(np.int32), "segment_ids": segment_ids,
            "valid": valid, "loss_mask": row["loss_mask"].astype(bool) & valid,
            "role_ids": (row["role_ids_plus_one"].astype(np.int32) - 1).astype(np.int8),
            "num_segments": np.int32(starts.sum()),
            "num_truncated": np.int32((starts & row["truncated"].astype(bool)).sum())}


def make_pipeline(stage: str, source: Sequence, tokenizer: Tokenizer, *, global_batch_size: int,
                  seq_len: int, seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                  rows: slice | None = None, drop_remainder: bool = True, num_candidates: int = 4,
                  rule_len: int | None = None, rules: Mapping[str, str] | None = None,
                  pad_prompts_left: bool = True, pack: bool = False, num_threads: int = 1,
                  prefetch_buffer_size: int = 8) -> BatchIterator:
    """Batches for one stage; see the module docstring and examples.EXAMPLE_SPECS.

    Args:
      stage: one of examples.STAGES ("lm", "sft", "pref_rm", "rule_rm", "prompts").
      source: random-access records (a tfds_builders.RecordSource or a list of records).
      global_batch_size: examples (or packed rows) per step across all processes.
      num_epochs: None repeats forever (training); 1 is one pass (evaluation).
      rows: the rows of each global batch this process keeps (`distributed.
        process_batch_slice`); None keeps all.
      drop_remainder: drop the last incomplete batch (with num_epochs set).
      num_candidates: pref_rm K; records with fewer candidates are padded (candidate_valid False).
      rule_len: rule_rm R, the padded length of the rule question suffix; None = the longest
        rule question rounded up to a multiple of 16 (a question longer than R is an error).
      rules: {rule_id: rule text}, in rule-index order; needed by rule_rm, used by prompts.
      pack: sft only: whole dialogues packed first-fit into rows of seq_len (a dialogue is
        never split; attention stays within its segment). Rows then carry segment_ids,
        positions restarting per dialogue, num_segments_B and num_truncated_B instead of
        record_index_B / truncated_B, and global_batch_size counts rows.
      num_threads / prefetch_buffer_size: grain ReadOptions for the per-record work.
    """
    if stage not in examples.STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {examples.STAGES}")
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    batch_size = global_batch_size
    dataset = grain.MapDataset.source(source)
    if stage != "lm":
        num_records = len(source)  # grain passes global indices (across epochs) to map_with_index
        dataset = dataset.map_with_index(lambda index, record: (index % num_records, record))
    if len(dataset) == 0:
        raise ValueError(f"{stage}: the source has no records")
    if shuffle:
        dataset = dataset.seed(seed).shuffle()
    if num_epochs != 1:
        dataset = dataset.repeat(num_epochs)
    read_options = grain.ReadOptions(num_threads=num_threads,
                                     prefetch_buffer_size=prefetch_buffer_size)
    if stage == "lm":
        dataset = dataset.map(lambda record: {"tokens": examples.lm_tokens(record, tokenizer)})
        packed = grain.experimental.ConcatThenSplitIterDataset(
            dataset.to_iter_dataset(read_options), length_struct={"tokens": seq_len})
        batched = packed.map(_packed_lm_row).batch(batch_size, drop_remainder=drop_remainder)
        return BatchIterator(batched.map(_keep_rows(rows)).map(_rename(stage)), stage)
    if pack:
        if stage != "sft":
            raise ValueError(f"pack=True is for the sft stage, not {stage!r}")
        segments = dataset.map(lambda indexed: examples.sft_segment(indexed[1], tokenizer, seq_len))
        lengths = {key: seq_len for key in ("tokens", "loss_mask", "role_ids_plus_one", "truncated")}
        # One bin per row of the batch: each batch is one packing round, so the
        # iterator state (and a resumed run) stays exact.
        packed = grain.experimental.FirstFitPackIterDataset(
            segments.to_iter_dataset(read_options), length_struct=lengths,
            num_packing_bins=batch_size, seed=seed, shuffle_bins=False)
        batched = packed.map(_packed_sft_row).batch(batch_size, drop_remainder=drop_remainder)
        return BatchIterator(batched.map(_keep_rows(rows)).map(_rename("sft_packed")), stage)
    example_fn = _example_fn(stage, tokenizer, seq_len, num_candidates=num_candidates,
                             rule_len=rule_len, rules=rules, pad_prompts_left=pad_prompts_left)

    def to_example(indexed):
        index, record = indexed
        return {**example_fn(record), "record_index": np.int32(index)}

    batched = dataset.map(to_example).batch(batch_size, drop_remainder=drop_remainder)
    return BatchIterator(batched.map(_keep_rows(rows)).map(_rename(stage))
                         .to_iter_dataset(read_options), stage)


def read_text_documents(path) -> list[str]:
    """Plain-text LM documents (e.g. the toy world's lm.txt): blocks separated by blank lines."""
    with open(path, encoding="utf-8") as f:
        return [block.strip("\n") for block in f.read().split("\n\n") if block.strip()]


def batch_spec(stage: str, batch_size: int, seq_len: int, num_candidates: int = 4,
               rule_len: int = 64) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{batch key: (shape, dtype)} of one stage's batches, e.g. for jit tracing or tests."""
    sizes = {"B": batch_size, "L": seq_len, "K": num_candidates, "R": rule_len}
    spec = {}
    for key, (letters, dtype) in examples.EXAMPLE_SPECS[stage].items():
        shape = (batch_size,) + tuple(sizes[c] for c in letters.split("x") if c)
        spec[examples.batch_key(stage, key)] = (shape, np.dtype(dtype))
    return spec
