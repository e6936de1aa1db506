"""`sparrow data prepare`: public data files -> one training-ready data dir.

    summary = prepare("data/real", [("hh", "hh.jsonl.gz"), ("pku", "pku.jsonl"),
                                    ("questions", "questions.txt")], test_fraction=0.1, seed=0)

Each source is converted (`converters`: HH-RLHF transcripts, PKU-SafeRLHF records, a
question list), the records of all sources are merged by kind, split into train and test
by a seeded hash of their *group* (an HH conversation's preference and SFT dialogue, and a
PKU prompt's preference and rule ratings, share one group, so no conversation is on both
sides), and written as the layout the stages read:

    OUT/dialogues.{train,test}.jsonl     SFT dialogues (hh: the chosen side)
    OUT/preferences.{train,test}.jsonl   comparisons (hh, pku)
    OUT/rule_ratings.{train,test}.jsonl  rule ratings (pku harm labels)
    OUT/prompts.{train,test}.jsonl       prompts (questions: eli5; red_team probes with their
                                         rule_id from pku and hh-red-team: `probes`)
    OUT/corpus.jsonl, OUT/search_index/  the search corpus (`corpus`: title/text records,
                                         `converters.title_text_documents`) and its BM25 index
    OUT/tfds/                            the TFDS datasets (`tfds_builders.build_all`)
    OUT/prepare.json                     sources, seed, fraction, counts per kind and split, skips

No tokenizer is written: the stages take the one stored in their `train.init_from`
checkpoint (`stage_data.load_tokenizer`). OUT must be new or empty: a built data dir is
never written into again.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from typing import Collection, Iterator, Sequence

from sparrow_jax.data import converters, probes, schemas
from sparrow_jax.data.jsonl import atomic_write

FORMATS = ("hh", "pku", "questions", "hh-red-team", "corpus")
SPLITS = ("train", "test")
SUMMARY_FILE = "prepare.json"


def split_share(seed: int, group: str) -> float:
    """A number in [0, 1) fixed by (seed, group): the group is in test when it is < fraction."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def _renamed(record, prefix: str):
    return record if not prefix else dataclasses.replace(record, id=f"{prefix}{record.id}")


def source_records(fmt: str, path, prefix: str = "", rule_ids: Collection[str] | None = None,
                   strict: bool = False, skipped: collections.Counter | None = None
                   ) -> Iterator[tuple[str, str, object]]:
    """(group, kind, record) of one source file; `prefix` keeps ids unique when one format comes
    from several files. Skips are counted in `skipped` ("fmt: reason"), or raised if `strict`."""
    if fmt == "hh":
        for item in converters.hh_records(path):
            if isinstance(item, converters.Skip):
                if strict:
                    raise ValueError(f"{path}: {item} (strict mode)")
                if skipped is not None:
                    skipped[f"hh: {item}"] += 1
                continue
            preference, dialogue = (_renamed(r, prefix) for r in item)
            yield preference.id, "preferences", preference
            yield preference.id, "dialogues", dialogue
    elif fmt == "pku":
        missing = set(converters.PKU_RATED_RULES) - set(rule_ids) if rule_ids is not None else set()
        if missing:
            raise ValueError(f"PKU_HARM_TO_RULES uses rule ids missing from the rules: {sorted(missing)}")
        for preference, ratings in converters.pku_records(path):
            preference = _renamed(preference, prefix)
            yield preference.id, "preferences", preference
            for rating in ratings:
                yield preference.id, "rule_ratings", _renamed(rating, prefix)
        yield from _probes(fmt, path, prefix, skipped)
    elif fmt == "hh-red-team":
        yield from _probes(fmt, path, prefix, skipped)
    elif fmt == "corpus":
        for doc in converters.title_text_documents(path):
            yield "", "corpus", dataclasses.replace(doc, id=f"{prefix}{doc.id}")
    elif fmt == "questions":
        for prompt in converters.question_records(path):
            prompt = _renamed(prompt, prefix)
            yield prompt.id, "prompts", prompt
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _probes(fmt: str, path, prefix: str, counts: collections.Counter | None):
    counts = counts if counts is not None else collections.Counter()
    for group, probe in probes.probes(fmt, path, counts):
        yield f"{prefix}{group}", "prompts", _renamed(probe, prefix)


def _write_corpus(out_dir: str, docs: list) -> None:
    """OUT/corpus.jsonl and its BM25 index OUT/search_index/, built with the data dir."""
    from sparrow_jax.search import BM25Engine, write_corpus
    ids = collections.Counter(d.id for d in docs)
    duplicate = next((i for i, n in ids.items() if n > 1), None)
    if duplicate is not None:
        raise ValueError(f"corpus: document id {duplicate!r} appears {ids[duplicate]} times")
    path = os.path.join(out_dir, "corpus.jsonl")
    write_corpus(path, docs)
    BM25Engine.build(path, os.path.join(out_dir, "search_index"))


def split_groups(groups: Sequence[str], test_fraction: float, seed: int) -> set[str]:
    """The groups that go to test. With test_fraction > 0 and at least 2 groups, at least one
    group goes to test and one stays in train (the one with the smallest / largest share)."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    shares = {g: split_share(seed, g) for g in groups}
    test = {g for g, share in shares.items() if share < test_fraction}
    if test_fraction > 0 and len(shares) >= 2:
        ordered = sorted(shares, key=shares.get)
        test.add(ordered[0])
        test.discard(ordered[-1])
    return test


def _check_out_dir(out_dir: str) -> None:
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir} is not empty: prepare writes a new data dir, and a built one is "
                         "never written into (choose a new --out)")


def prepare(out_dir: str, sources: Sequence[tuple[str, str]], *, test_fraction: float = 0.1,
            seed: int = 0, rule_ids: Collection[str] | None = None, strict: bool = False,
            build: bool = True) -> dict:
    """Convert, merge, split and write `sources` ((format, path) pairs) to `out_dir`, then build
    the TFDS datasets (unless `build` is False). Returns the summary written to prepare.json."""
    if not sources:
        raise ValueError("no sources: give at least one of --hh, --pku, --questions, --hh-red-team, --corpus")
    _check_out_dir(out_dir)
    per_format = collections.Counter(fmt for fmt, _ in sources)
    seen = collections.Counter()
    skipped: collections.Counter = collections.Counter()
    by_kind: dict[str, list[tuple[str, object]]] = collections.defaultdict(list)
    test: set[str] = set()
    corpus: list = []
    for fmt, path in sources:
        seen[fmt] += 1
        prefix = f"{seen[fmt]}." if per_format[fmt] > 1 else ""
        groups = []
        for group, kind, record in source_records(fmt, path, prefix, rule_ids, strict, skipped):
            if kind == "corpus":
                corpus.append(record)
                continue
            by_kind[kind].append((group, record))
            groups.append(group)
        # Split each source on its own, so every kind it gives has both splits.
        test |= split_groups(list(dict.fromkeys(groups)), test_fraction, seed)
    os.makedirs(out_dir, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for kind in schemas.KINDS:
        if kind not in by_kind:
            continue
        counts[kind] = {}
        for split in SPLITS:
            records = [r for g, r in by_kind[kind] if (g in test) == (split == "test")]
            if records:  # an empty split file would be an empty TFDS split, which TFDS refuses
                counts[kind][split] = schemas.write_jsonl(
                    os.path.join(out_dir, f"{kind}.{split}.jsonl"), records)
    if corpus:
        _write_corpus(out_dir, corpus)
        counts["corpus"] = {"train": len(corpus)}
    summary = {"sources": [{"format": fmt, "path": os.fspath(path)} for fmt, path in sources],
               "test_fraction": test_fraction, "seed": seed, "counts": counts,
               "skipped": dict(sorted(skipped.items())), "tfds": "tfds" if build else None}
    with atomic_write(os.path.join(out_dir, SUMMARY_FILE)) as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    if build:
        from sparrow_jax.data import tfds_builders
        tfds_builders.build_all(out_dir, os.path.join(out_dir, "tfds"), rule_ids=rule_ids)
    return summary
