"""Malformed and hostile inputs get one clear error naming the file and line (or the key), never a
traceback, and leave no partial output (issue 22's examples, one test each)."""
import gzip
import json
import os

import pytest

from sparrow_jax.cli import main
from sparrow_jax.data import jsonl, schemas
from sparrow_jax.dialogue.rules import load_rules
from sparrow_jax.dialogue.tokenizer import Tokenizer
from sparrow_jax.evaluation.evaluator import load_prompts

GOOD_DIALOGUE = {"id": "d1", "turns": [{"role": "user", "text": "hi"},
                                       {"role": "agent", "text": "hello"}]}


def _write_lines(path, lines: list[bytes]) -> str:
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return str(path)


def _dialogues(tmp_path, bad_line: bytes, name="dialogues.train.jsonl") -> str:
    return _write_lines(tmp_path / name, [json.dumps(GOOD_DIALOGUE).encode(), bad_line])


def _refused(path, match):
    with pytest.raises(ValueError, match=match) as info:
        schemas.read_all(path)
    assert str(info.value).startswith(str(path))
    return str(info.value)


def test_lone_surrogate_escape_names_file_line_and_field(tmp_path):
    bad = b'{"id": "d2", "turns": [{"role": "user", "text": "a\\udc80b"}]}'
    message = _refused(_dialogues(tmp_path, bad), r":2: field 'turns\[0\].text': not valid Unicode")
    assert "\\udc80" in message


def test_bytes_that_are_not_utf8_name_file_line_and_byte(tmp_path):
    bad = b'{"id": "d2", "turns": [{"role": "user", "text": "caf\xff"}]}'
    _refused(_dialogues(tmp_path, bad), r":2: field '<bytes>': not UTF-8: byte 0xff at column 53")


def test_deeply_nested_json_is_refused_not_a_recursion_error(tmp_path):
    _refused(_dialogues(tmp_path, b"[" * 100_000 + b"]" * 100_000), r":2: .*nested more than 64")
    deep = b'{"id": "d2", "x": ' + b"[" * 70 + b"]" * 70 + b"}"
    _refused(_dialogues(tmp_path, deep), r":2: .*nested more than 64")


def test_a_directory_where_a_file_is_expected(tmp_path):
    directory = tmp_path / "dialogues.train.jsonl"
    directory.mkdir()
    with pytest.raises(ValueError, match="is a directory, expected a dialogues JSONL file"):
        schemas.read_all(directory)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "dialogues.train.jsonl.gz"
    data = gzip.compress((json.dumps(GOOD_DIALOGUE) + "\n").encode() * 200)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{path}: corrupt or truncated gzip data"):
        schemas.read_all(path, "dialogues")


def test_garbage_tokenizer_file(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\x00not a model" * 8)
    with pytest.raises(ValueError, match=f"{path}: not a SentencePiece model"):
        Tokenizer.load(path)


def test_tokenizer_refuses_invalid_unicode_and_clean_text_repairs_it(tokenizer):
    text = "a\udc80b\x00c\td\n"
    with pytest.raises(ValueError, match=r"not valid Unicode: lone surrogate \\udc80"):
        tokenizer.encode(text)
    assert jsonl.clean_text(text) == "a\ufffdbc\td\n"
    assert tokenizer.encode(jsonl.clean_text(text))  # what chat hands the tokenizer


def test_empty_rules_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "rules.jsonl"
    path.write_text("\n \n")
    with pytest.raises(ValueError, match=f"{path}: the rules file has no rules"):
        load_rules(path)


def test_empty_prompts_file_and_unknown_probe_rule(tmp_path):
    path = tmp_path / "prompts.test.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match="the prompts file is empty"):
        load_prompts(str(tmp_path))
    probe = {"id": "q1", "source": "red_team", "context": [{"role": "user", "text": "hi"}],
             "rule_id": "no_such_rule"}
    path.write_text(json.dumps(probe) + "\n")
    with pytest.raises(ValueError, match=r"prompts.test.jsonl:1: field 'rule_id': unknown rule id"):
        load_prompts(str(tmp_path), rule_ids={r.id for r in load_rules()})


def test_data_build_refuses_an_empty_split_with_exit_2(tmp_path, capsys):
    schemas.write_jsonl(tmp_path / "dialogues.train.jsonl", [GOOD_DIALOGUE])
    (tmp_path / "dialogues.test.jsonl").write_text("\n")
    with pytest.raises(SystemExit) as stop:
        main(["data", "build", "--jsonl-dir", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "dialogues.test.jsonl: no records" in err and "Traceback" not in err
    assert not (tmp_path / "tfds").exists() or not os.listdir(tmp_path / "tfds")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with jsonl.atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["out.jsonl"]
    with pytest.raises(ValueError, match="is a directory"):
        with jsonl.atomic_write(tmp_path):
            pass


def test_rating_form_text_passes_the_same_boundary_rule():
    from sparrow_jax.rating.limits import FormError, parse_message
    assert parse_message({"message": " hi\x00 \x1b[31mthere\udc80 "}) == jsonl.clean_text(
        "hi\x00 \x1b[31mthere\udc80")
    with pytest.raises(FormError, match="empty"):
        parse_message({"message": "\x00\x07"})
