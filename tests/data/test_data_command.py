"""`sparrow data ...` end to end: toyworld (+ TFDS build), build, convert, and the exit-2 error path."""
import os

import numpy as np
import pytest

from data_helpers import FIXTURES
from sparrow_jax import cli
from sparrow_jax.data import pipelines, schemas, tfds_builders
from sparrow_jax.dialogue.rules import load_rules

SMALL_WORLD = ["--set", "n_entities=12", "--set", "n_heldout=3", "--set", "n_distractors=2",
               "--set", "n_dialogues=40", "--set", "n_preferences=20", "--set", "n_rule_ratings=20",
               "--set", "n_prompts=10"]


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        cli.main(["data", *argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_toyworld_generates_and_builds(tmp_path, capsys, tokenizer):
    out_dir = str(tmp_path / "world")
    code, out, err = _run(capsys, "toyworld", "--out", out_dir, "--seed", "3", *SMALL_WORLD)
    assert code == 0, err
    assert "toy world generation + TFDS build:" in out
    rules = {rule.id: rule.text for rule in load_rules()}
    for kind in tfds_builders.BUILDERS:
        for split, path in tfds_builders.jsonl_paths(out_dir, kind).items():
            source = tfds_builders.load_source(os.path.join(out_dir, "tfds"), kind, split)
            assert list(source) == schemas.read_all(path, kind, rule_ids=set(rules))
    # the built data feeds every stage
    for stage, kind in [("sft", "dialogues"), ("pref_rm", "preferences"), ("rule_rm", "rule_ratings"),
                        ("prompts", "prompts"), ("lm", "corpus")]:
        source = tfds_builders.load_source(os.path.join(out_dir, "tfds"), kind, "train")
        batch = next(pipelines.make_pipeline(stage, source, tokenizer, global_batch_size=2, seq_len=256,
                                             rules=rules))
        assert all(isinstance(v, np.ndarray) for v in batch.values())
    texts = pipelines.read_text_documents(os.path.join(out_dir, "lm.txt"))
    batch = next(pipelines.make_pipeline("lm", texts, tokenizer, global_batch_size=2, seq_len=64))
    assert batch["tokens_BxL"].shape == (2, 64) and batch["valid_BxL"].all()


def test_toyworld_no_build_and_bad_setting(tmp_path, capsys):
    code, out, _ = _run(capsys, "toyworld", "--out", str(tmp_path), "--no-build", *SMALL_WORLD)
    assert code == 0 and not os.path.exists(tmp_path / "tfds")
    code, _, err = _run(capsys, "toyworld", "--out", str(tmp_path), "--set", "n_planets=3")
    assert code == 2 and "n_planets" in err


def test_build_bad_data_exits_2_naming_file_line_field(tmp_path, capsys):
    path = tmp_path / "rule_ratings.train.jsonl"
    path.write_text('{"id": "a", "dialogue": [{"role": "user", "text": "x"}], "rule_id": "general_harm", '
                    '"broken": false}\n{"id": "b", "dialogue": [], "rule_id": "no_jokes", "broken": true}\n')
    code, _, err = _run(capsys, "build", "--jsonl-dir", str(tmp_path))
    assert code == 2
    assert err.count("\n") == 1
    assert f"{path}:2: field 'dialogue'" in err


def test_convert(tmp_path, capsys):
    out = tmp_path / "preferences.train.jsonl"
    code, stdout, err = _run(capsys, "convert", "--format", "hh", "--in", os.path.join(FIXTURES, "hh.jsonl"),
                             "--out", str(out), "--dialogues-out", str(tmp_path / "dialogues.train.jsonl"))
    assert code == 0, err
    assert "wrote 3 records" in stdout and "skipped 1 records: identical transcripts" in stdout
    code, _, err = _run(capsys, "build", "--jsonl-dir", str(tmp_path))
    assert code == 0, err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    code, _, err = _run(capsys, "convert", "--format", "pku", "--in", str(bad), "--out", str(out))
    assert code == 2 and f"{bad}:1: field '<json>'" in err
