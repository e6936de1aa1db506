"""Corpus documents: loading a JSONL corpus with precise errors, and the shared word tokenizer."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterable, Iterator

from sparrow_jax.data import jsonl

REQUIRED_FIELDS = ("id", "title", "url", "text")

# Function words carry no evidence about which document or passage is meant.
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how i in is it its me my "
    "of on or tell than that the their there these this to was were what when where which "
    "who whom why will with you your".split()
)
_WORD = re.compile(r"[a-z0-9]+")


class CorpusError(ValueError):
    """A corpus file that cannot be read; the message names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class Document:
    id: str
    title: str
    url: str
    text: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words without stopwords (used for documents and queries alike)."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def parse_document(obj: object, where: str) -> Document:
    """Check one decoded JSON line; `where` is "file:line" for the error message."""
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for field in REQUIRED_FIELDS:
        if field not in obj:
            raise CorpusError(f"{where}: missing field {field!r}")
        if not isinstance(obj[field], str):
            raise CorpusError(
                f"{where}: field {field!r} must be a string, got {type(obj[field]).__name__}"
            )
    if not obj["id"]:
        raise CorpusError(f"{where}: field 'id' is empty")
    return Document(obj["id"], obj["title"], obj["url"], obj["text"])


def iter_corpus(path: str | os.PathLike) -> Iterator[Document]:
    """Yield the documents of a JSONL corpus; blank lines are skipped."""
    path = os.fspath(path)
    seen: dict[str, int] = {}
    for lineno, obj in jsonl.json_lines(path, "corpus JSONL"):
        where = f"{path}:{lineno}"
        doc = parse_document(obj, where)
        if doc.id in seen:
            raise CorpusError(
                f"{where}: field 'id' duplicates {doc.id!r} from line {seen[doc.id]}"
            )
        seen[doc.id] = lineno
        yield doc


def load_corpus(path: str | os.PathLike) -> list[Document]:
    docs = list(iter_corpus(path))
    if not docs:
        raise CorpusError(f"{os.fspath(path)}: the corpus has no documents")
    return docs


def write_corpus(path: str | os.PathLike, docs: Iterable[Document]) -> None:
    with jsonl.atomic_write(path) as f:
        for doc in docs:
            f.write(json.dumps(doc.to_json(), ensure_ascii=False) + "\n")
