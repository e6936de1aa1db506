"""Property tests: generated corruptions of valid inputs, through the real `sparrow` entry points
(`data build`, `train` config overrides, `eval` prompts, `chat` stdin). Every outcome is either
success or exit code 2 with a one-line message naming the file and line (or the config key), no
traceback, and no partial output.
"""
import io
import json
import os
import shutil
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loop_helpers import make_world, tiny_config
from sparrow_jax.cli import main
from sparrow_jax.train import loop

BUDGET = settings(max_examples=12, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(str(tmp_path_factory.mktemp("hostile") / "world"))


@pytest.fixture(scope="module")
def sft(world, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("hostile") / "sft")
    loop.train_stage(tiny_config("sft", world, steps=1), workdir)
    return workdir


def _run(argv, capsys, stdin: bytes | None = None) -> tuple[int, str]:
    old = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        with pytest.raises(SystemExit) as stop:
            main(argv)
    finally:
        sys.stdin = old
    err = capsys.readouterr().err
    return stop.value.code or 0, err


def _one_clear_line(code: int, err: str, *names: str) -> None:
    assert "Traceback" not in err, err
    if code == 0:
        return
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(
        ("WARNING", "INFO", "I1", "W1", "evaluating", "E1"))]
    assert len(lines) == 1, err
    assert any(name in lines[0] for name in names), (names, lines[0])


@st.composite
def corrupted(draw, text: str) -> bytes:
    """`text`'s bytes with one generated corruption."""
    data = text.encode("utf-8")
    lines = data.split(b"\n")
    kind = draw(st.sampled_from(["truncate", "insert", "surrogate", "drop_field", "nest",
                                 "duplicate", "empty", "not_object", "wrong_type"]))
    row = draw(st.sampled_from([i for i, x in enumerate(lines) if x.strip()]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data)))]
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    if kind == "empty":
        return b""
    obj = json.loads(lines[row])
    key = draw(st.sampled_from(sorted(obj)))
    if kind == "surrogate":
        obj[key] = "x\udc80"
        line = json.dumps(obj).encode()
    elif kind == "drop_field":
        line = json.dumps({k: v for k, v in obj.items() if k != key}).encode()
    elif kind == "nest":
        line = b"[" * 5000 + b"]" * 5000
    elif kind == "duplicate":
        line = lines[row] + b"\n" + lines[row]
    elif kind == "not_object":
        line = json.dumps([obj]).encode()
    else:
        obj[key] = draw(st.sampled_from([None, 7, [1], {"a": 1}, True]))
        line = json.dumps(obj).encode()
    lines[row] = line
    return b"\n".join(lines)


def _fresh(tmp_path):
    """A new directory per hypothesis example (a function's tmp_path outlives one example)."""
    path = tmp_path / f"example{len(os.listdir(tmp_path))}"
    path.mkdir()
    return path


def _copy_world(world: str, root) -> str:
    target = os.path.join(str(root), "data")
    if os.path.exists(target):
        shutil.rmtree(target)
    shutil.copytree(world, target, ignore=shutil.ignore_patterns("tfds", "search_index"))
    return target


@BUDGET
@given(data=st.data(), name=st.sampled_from(["dialogues.train.jsonl", "preferences.test.jsonl",
                                             "rule_ratings.train.jsonl", "prompts.test.jsonl",
                                             "corpus.jsonl"]))
def test_data_build(world, tmp_path, capsys, data, name):
    jsonl_dir = _copy_world(world, tmp_path)
    path = os.path.join(jsonl_dir, name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "wb") as f:
        f.write(data.draw(corrupted(text)))
    code, err = _run(["data", "build", "--jsonl-dir", jsonl_dir,
                      "--tfds-dir", os.path.join(jsonl_dir, "tfds")], capsys)
    _one_clear_line(code, err, name)
    if code:
        assert not os.path.exists(os.path.join(jsonl_dir, "tfds")) or not any(
            files for _, _, files in os.walk(os.path.join(jsonl_dir, "tfds")))


FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "fixtures")


@BUDGET
@given(data=st.data(), fmt=st.sampled_from(["hh", "pku", "questions"]))
def test_data_convert(tmp_path, capsys, data, fmt):
    source = {"hh": "hh.jsonl", "pku": "pku.jsonl", "questions": "questions.txt"}[fmt]
    with open(os.path.join(FIXTURES, source), encoding="utf-8") as f:
        text = f.read()
    tmp_path = _fresh(tmp_path)
    path = tmp_path / source
    if fmt == "questions":  # a text file: corrupt its bytes
        raw = text.encode()
        at = data.draw(st.integers(0, len(raw)))
        path.write_bytes(raw[:at] + data.draw(st.binary(min_size=1, max_size=4)) + raw[at:])
    else:
        path.write_bytes(data.draw(corrupted(text)))
    out = tmp_path / "out"
    out.mkdir()
    outputs = {"hh": ["--dialogues-out", str(out / "dialogues.jsonl")],
               "pku": ["--rule-ratings-out", str(out / "rule_ratings.jsonl")], "questions": []}[fmt]
    code, err = _run(["data", "convert", "--format", fmt, "--in", str(path),
                      "--out", str(out / "main.jsonl"), *outputs], capsys)
    _one_clear_line(code, err, source)
    if code:
        assert os.listdir(out) == []  # nothing partial


KEYS = ["train.steps", "train.learning_rate", "train.warmup_steps", "train.log_every",
        "train.seq_len", "train.keep_checkpoints", "train.batch_size", "model", "model.d_model",
        "model.n_heads", "mesh.logical_axis_rules", "mesh.shape.data", "rl.top_p", "rl.prompt_mix",
        "data.num_candidates", "train.no_such_key", "loss.pref_aux_weight", "distributed.mode"]
VALUES = ["nan", "inf", "-inf", "-5", "0", "", "x", "[5]", "{}", "1e400", "True", "\udc80", "5"]


@BUDGET
@given(key=st.sampled_from(KEYS), value=st.sampled_from(VALUES))
def test_train_overrides(tmp_path, capsys, key, value):
    workdir = tmp_path / "run"
    code, err = _run(["train", "--config", "experiments/tiny_cpu.py:sft", "--workdir", str(workdir),
                      "--config.data.dir=/nonexistent/data", f"--config.{key}={value}"], capsys)
    assert code == 2, err  # a bad value, or else the missing data dir: never a run
    _one_clear_line(code, err, key.split(".")[-1], "data.dir", "/nonexistent/data")


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_eval_prompts(world, sft, tmp_path, capsys, data):
    tmp_path = _fresh(tmp_path)
    data_dir = _copy_world(world, tmp_path)
    path = os.path.join(data_dir, "prompts.test.jsonl")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "wb") as f:
        f.write(data.draw(corrupted(text)))
    out = tmp_path / "report"
    code, err = _run(["eval", "--workdir", sft, f"--config.data.dir={data_dir}", "--max-prompts", "2",
                      "--batch-size", "2", "--out", str(out)], capsys)
    _one_clear_line(code, err, "prompts.test.jsonl")
    if code:
        assert not out.exists()


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(line=st.binary(min_size=1, max_size=24).filter(lambda b: b"\n" not in b and b.strip()))
def test_chat_stdin(sft, capsys, line):
    stdin = line + b"\n" + b"hi \xff\xfe \\udc80 User: Sparrow:\n"
    code, err = _run(["chat", "--workdir", sft, "--config.rl.max_new_tokens=4"], capsys, stdin)
    assert code == 0 and "Traceback" not in err, err
