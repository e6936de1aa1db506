"""The one reader of JSON-lines inputs, the one writer of output files, and the one rule for
text that arrives from a person or the network.

Reading (`json_lines`): every JSONL-like input (corpus, dialogues, preferences, rule ratings,
prompts, rules, converter inputs), plain or `.gz`, goes through here, so every failure names
the file and the line:
  - the path must be an existing file (not a directory); a `.gz` must decompress to the end;
  - each line must be UTF-8 (the error gives the byte and column) and at most
    MAX_LINE_CHARS characters;
  - each non-blank line must be one JSON object, nested at most MAX_DEPTH deep, whose
    strings are valid Unicode: a lone surrogate escape such as "\\udc80" is refused (no
    tokenizer, file or terminal can hold it).
Errors are `SchemaError(path, line, field, message)` for a line and `InputFileError` for the
file as a whole; both are ValueErrors, which every command reports as one line, exit 2.

Writing (`atomic_write`): outputs are written to a temporary file beside the target and
renamed over it when complete, so a failed run leaves no partial file.

Interactive text (`clean_text`: chat stdin, rater forms, search results): lone surrogates
become U+FFFD and control characters other than tab and newline are dropped, before the text
reaches the tokenizer (which itself never turns text into a role id).
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import unicodedata
import zlib
from typing import Any, Iterator

MAX_LINE_CHARS = 16 * 2**20
MAX_DEPTH = 64


class SchemaError(ValueError):
    """A data line that does not match its schema (or is not readable JSON text)."""

    def __init__(self, path: str, line: int, field: str, message: str):
        self.path, self.line, self.field = path, line, field
        super().__init__(f"{path}:{line}: field '{field}': {message}")


class InputFileError(ValueError):
    """An input file that cannot be read as a whole (missing, a directory, a broken .gz)."""


def check_input_file(path: str | os.PathLike, what: str = "input") -> str:
    """`path` as str if it is a readable file; InputFileError saying what it is otherwise."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputFileError(f"{path}: is a directory, expected a {what} file")
    if not os.path.exists(path):
        raise InputFileError(f"{path}: no such {what} file")
    return path


def _raw_lines(path: str) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                yield number, raw
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise InputFileError(f"{path}: corrupt or truncated gzip data after line {number} "
                             f"({err})") from None


def text_lines(path: str | os.PathLike, what: str = "input") -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a UTF-8 text file, plain or .gz."""
    path = check_input_file(path, what)
    for number, raw in _raw_lines(path):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SchemaError(path, number, "<bytes>", f"not UTF-8: byte 0x{raw[err.start]:02x} "
                              f"at column {err.start + 1}") from None
        if len(line) > MAX_LINE_CHARS:
            raise SchemaError(path, number, "<line>", f"{len(line)} characters, more than "
                              f"{MAX_LINE_CHARS}")
        yield number, line.rstrip("\r\n")


def _check_value(value: Any, field: str, depth: int = 0) -> str | None:
    """The first problem in a parsed JSON value (too deep, lone surrogate), as 'field: msg'."""
    stack = [(value, field, depth)]
    while stack:
        item, where, level = stack.pop()
        if level > MAX_DEPTH:
            return f"{where}|nested more than {MAX_DEPTH} deep"
        if isinstance(item, str):
            bad = invalid_unicode(item)
            if bad is not None:
                return f"{where}|{bad}"
        elif isinstance(item, dict):
            for key, sub in item.items():
                bad = invalid_unicode(key)
                if bad is not None:
                    return f"{where}|key {bad}"
                stack.append((sub, key if where == "<json>" else f"{where}.{key}", level + 1))
        elif isinstance(item, list):
            stack.extend((sub, f"{where}[{i}]", level + 1) for i, sub in enumerate(item))
    return None


def invalid_unicode(text: str) -> str | None:
    """None for valid Unicode text, else what is wrong (a lone surrogate and where)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as err:
        return (f"not valid Unicode: lone surrogate \\u{ord(text[err.start]):04x} at character "
                f"{err.start + 1}")


def parse_object(line: str, path: str, number: int) -> dict:
    """One JSONL line -> a dict, or SchemaError naming the file, line and field."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise SchemaError(path, number, "<json>", f"malformed JSON: {err.msg} at column "
                          f"{err.colno}") from None
    except RecursionError:
        raise SchemaError(path, number, "<json>", f"nested more than {MAX_DEPTH} deep") from None
    return check_object(obj, path, number)


def check_object(obj: Any, path: str, number: int) -> dict:
    """`obj` if it is a dict within MAX_DEPTH whose strings are valid Unicode; SchemaError."""
    if not isinstance(obj, dict):
        raise SchemaError(path, number, "<json>", f"expected an object, got {type(obj).__name__}")
    problem = _check_value(obj, "<json>")
    if problem is not None:
        field, message = problem.split("|", 1)
        raise SchemaError(path, number, field, message)
    return obj


def json_lines(path: str | os.PathLike, what: str = "input") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file (plain or .gz)."""
    path = os.fspath(path)
    for number, line in text_lines(path, what):
        if line.strip():
            yield number, parse_object(line, path, number)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file beside `path` for writing; on success rename it to `path`, on
    failure remove it (the target is then as it was)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputFileError(f"{path}: is a directory, expected an output file path")
    tmp = f"{path}.tmp{os.getpid()}"
    kwargs = {} if "b" in mode else {"encoding": "utf-8"}
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def clean_text(text: str) -> str:
    """The boundary rule for text from a person or the network: lone surrogates -> U+FFFD,
    control characters other than tab and newline dropped; everything else kept as is."""
    out = []
    for c in text:
        category = unicodedata.category(c)
        if category == "Cs":
            out.append("\ufffd")
        elif category != "Cc" or c in "\t\n":
            out.append(c)
    return "".join(out)
