"""TFDS builders over the local JSONL files, stored as array_record.

One builder per data kind (`sparrow_corpus`, `sparrow_dialogues`,
`sparrow_preferences`, `sparrow_rule_ratings`, `sparrow_prompts`). Each reads
`<kind>.<split>.jsonl` from the *manual dir* (nothing is ever downloaded),
validates every line with `schemas.read_jsonl`, and stores one example per
record: `{"id": Text, "json": Text}`, the record's canonical JSON. Plain text
features keep the builders free of TensorFlow: they are written as array_record
and read back with `as_data_source`, which needs no TF (`tfds.load` and
`as_dataset` do). Shuffling at write time is disabled, so a split reads back in
file order.

    builders = build_all("world/", "world/tfds")
    source = load_source("world/tfds", "preferences", "train")   # Sequence[PreferenceRecord]
"""
from __future__ import annotations

import json
import logging
import os
from typing import Collection, Sequence

import tensorflow_datasets as tfds

from sparrow_jax.data import schemas

SPLITS = ("train", "test")
# Corpus documents are the search index, not a train/test set; one split named "train".
CORPUS_SPLIT = "train"
_VERSION = "1.0.0"


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds one data kind from `<manual_dir>/<kind>.<split>.jsonl`."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {_VERSION: "JSONL records stored as canonical JSON text."}
    KIND: str = ""
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass download_config=tfds.download.DownloadConfig(manual_dir=DIR) where DIR holds "
        "the JSONL files of docs/interfaces.md (e.g. the output of `sparrow data toyworld`).")

    # tfds locates a checksums file next to the builder's code through
    # `importlib_resources`, which tfds 4.9.10 imports unconditionally but only
    # declares for Python < 3.9. Nothing here is downloaded, so there is no
    # checksums file: say so instead of importing it.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def __init__(self, *, rule_ids: Collection[str] | None = None, **kwargs):
        self._rule_ids = None if rule_ids is None else frozenset(rule_ids)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    # tfds prints these to stdout unconditionally; route them to the log instead.
    def _log_download_bytes(self) -> None:
        logging.info("Preparing %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("Prepared %s in %s", self.name, self.data_dir)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"sparrow_jax {self.KIND} records (see docs/interfaces.md).",
            features=tfds.features.FeaturesDict({"id": tfds.features.Text(),
                                                 "json": tfds.features.Text()}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        paths = jsonl_paths(dl_manager.manual_dir, self.KIND)
        if not paths:
            raise FileNotFoundError(f"no {self.KIND}.*.jsonl files in {dl_manager.manual_dir}")
        return {split: self._generate_examples(path) for split, path in paths.items()}

    def _generate_examples(self, path):
        for record in schemas.read_jsonl(os.fspath(path), self.KIND, self._rule_ids):
            text = json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True)
            yield record.id, {"id": record.id, "json": text}


class SparrowCorpus(_JsonlBuilder):
    KIND = "corpus"


class SparrowDialogues(_JsonlBuilder):
    KIND = "dialogues"


class SparrowPreferences(_JsonlBuilder):
    KIND = "preferences"


class SparrowRuleRatings(_JsonlBuilder):
    KIND = "rule_ratings"


class SparrowPrompts(_JsonlBuilder):
    KIND = "prompts"


BUILDERS: dict[str, type[_JsonlBuilder]] = {
    cls.KIND: cls for cls in (SparrowCorpus, SparrowDialogues, SparrowPreferences,
                              SparrowRuleRatings, SparrowPrompts)}


def jsonl_paths(jsonl_dir, kind: str) -> dict[str, str]:
    """{split: path} of the JSONL files for `kind` that exist in `jsonl_dir`."""
    jsonl_dir = os.fspath(jsonl_dir)
    if kind == "corpus":
        path = os.path.join(jsonl_dir, "corpus.jsonl")
        return {CORPUS_SPLIT: path} if os.path.exists(path) else {}
    paths = {split: os.path.join(jsonl_dir, f"{kind}.{split}.jsonl") for split in SPLITS}
    return {split: path for split, path in paths.items() if os.path.exists(path)}


def build(kind: str, jsonl_dir, tfds_data_dir, rule_ids: Collection[str] | None = None,
          overwrite: bool = True) -> _JsonlBuilder:
    """Builds (or with overwrite=False, reuses) the TFDS dataset of one kind."""
    builder = BUILDERS[kind](data_dir=os.fspath(tfds_data_dir), rule_ids=rule_ids)
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(jsonl_dir), download_mode=mode)
    builder.download_and_prepare(
        download_dir=os.path.join(os.fspath(tfds_data_dir), "downloads"),
        download_config=config)
    return builder


def build_all(jsonl_dir, tfds_data_dir, rule_ids: Collection[str] | None = None,
              overwrite: bool = True, progress: bool = False) -> dict[str, _JsonlBuilder]:
    """Builds every kind whose JSONL files exist in `jsonl_dir`; {kind: builder}.

    Raises schemas.SchemaError (a ValueError naming file, line and field) on the
    first bad line, ValueError naming an empty file, FileNotFoundError when no JSONL
    file is found at all.
    """
    if not progress:
        tfds.disable_progress_bar()
        logging.getLogger("absl").setLevel(logging.WARNING)
    kinds = [kind for kind in BUILDERS if jsonl_paths(jsonl_dir, kind)]
    if not kinds:
        raise FileNotFoundError(f"no JSONL data files in {jsonl_dir} "
                                f"(expected e.g. corpus.jsonl, dialogues.train.jsonl)")
    # Validate every file before building any: rebuilding replaces a prepared dataset,
    # and a bad line found midway would leave the old data deleted and the new unbuilt.
    # An empty split is refused here too (TFDS would fail on it after building the others).
    for kind in kinds:
        for path in jsonl_paths(jsonl_dir, kind).values():
            if not sum(1 for _ in schemas.read_jsonl(path, kind, rule_ids)):
                raise ValueError(f"{path}: no records (the file is empty or blank); remove it or "
                                 f"add at least one {kind} record")
    return {kind: build(kind, jsonl_dir, tfds_data_dir, rule_ids, overwrite) for kind in kinds}


class RecordSource(Sequence):
    """Random access to the records of one prepared split (what grain reads).

    Wraps a TFDS array_record data source; `source[i]` is the i-th typed record
    (a schemas.*Record), decoded from its stored JSON.
    """

    def __init__(self, tfds_source, kind: str):
        self._source, self.kind = tfds_source, kind

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        example = self._source[index % len(self)]
        text = example["json"]
        obj = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
        return schemas.record_from_json(self.kind, obj)

    def __repr__(self) -> str:
        return f"RecordSource(kind={self.kind!r}, len={len(self)})"


def load_source(tfds_data_dir, kind: str, split: str = "train") -> RecordSource:
    """The records of one prepared split, read without TensorFlow."""
    builder = BUILDERS[kind](data_dir=os.fspath(tfds_data_dir))
    return RecordSource(builder.as_data_source(split), kind)
