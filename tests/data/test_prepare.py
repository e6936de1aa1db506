"""`sparrow data prepare`: public files -> one merged, split, built data dir."""
import json
import os

import pytest

from sparrow_jax.cli import main
from sparrow_jax.data import schemas
from sparrow_jax.data.converters import PKU_RATED_RULES
from sparrow_jax.data.prepare import prepare, split_groups


def write_sources(tmp_path, n_hh=12, n_pku=8, n_questions=10):
    hh, pku, questions = tmp_path / "hh.jsonl", tmp_path / "pku.jsonl", tmp_path / "questions.txt"
    with open(hh, "w") as f:
        for i in range(n_hh):
            q = f"\n\nHuman: Question number {i}?"
            f.write(json.dumps({"chosen": f"{q}\n\nAssistant: Answer {i}.",
                                "rejected": f"{q}\n\nAssistant: No idea."}) + "\n")
        # identical sides: no faithful comparison, counted as skipped
        f.write(json.dumps({"chosen": "\n\nHuman: x\n\nAssistant: y",
                            "rejected": "\n\nHuman: x\n\nAssistant: y"}) + "\n")
    with open(pku, "w") as f:
        for i in range(n_pku):
            f.write(json.dumps({
                "prompt": f"How can I get back at neighbour {i}?", "response_0": "Talk to them calmly.",
                "response_1": "Call them an idiot.", "is_response_0_safe": True,
                "is_response_1_safe": False, "better_response_id": 0, "safer_response_id": 0,
                "response_0_harm_category": {"Insulting Behavior": False},
                "response_1_harm_category": {"Insulting Behavior": True}}) + "\n")
    questions.write_text("".join(f"Why is thing {i} so?\n" for i in range(n_questions)))
    return [("hh", str(hh)), ("pku", str(pku)), ("questions", str(questions))]


def read(out, kind, split):
    return list(schemas.read_jsonl(os.path.join(out, f"{kind}.{split}.jsonl"), kind))


def test_layout_is_split_by_conversation_and_seeded(tmp_path):
    sources = write_sources(tmp_path)
    out = str(tmp_path / "data")
    summary = prepare(out, sources, test_fraction=0.3, seed=1, build=False)
    assert summary["skipped"] == {"hh: identical transcripts": 1}
    assert summary["counts"]["preferences"]["train"] + summary["counts"]["preferences"]["test"] == 20
    assert summary["counts"]["rule_ratings"]["train"] + summary["counts"]["rule_ratings"]["test"] == 8 * 2 * len(PKU_RATED_RULES)
    for kind in ("dialogues", "preferences", "rule_ratings", "prompts"):
        assert read(out, kind, "test") and read(out, kind, "train"), kind
    # A conversation's records sit in one split: hh dialogue with its comparison, pku ratings with theirs.
    for split in ("train", "test"):
        prefs = {r.id for r in read(out, "preferences", split)}
        assert {r.id for r in read(out, "dialogues", split)} <= prefs
        assert {r.id.split("-r")[0] for r in read(out, "rule_ratings", split)} <= prefs
    assert sorted(os.listdir(out)) == sorted(
        [f"{k}.{s}.jsonl" for k in ("dialogues", "preferences", "rule_ratings", "prompts")
         for s in ("train", "test")] + ["prepare.json"])
    again = prepare(str(tmp_path / "again"), sources, test_fraction=0.3, seed=1, build=False)
    assert again["counts"] == summary["counts"]
    assert read(str(tmp_path / "again"), "prompts", "test") == read(out, "prompts", "test")
    prepare(str(tmp_path / "other"), sources, test_fraction=0.3, seed=2, build=False)
    assert [r.id for r in read(str(tmp_path / "other"), "preferences", "test")] != \
        [r.id for r in read(out, "preferences", "test")]


def test_two_files_of_one_format_merge_with_unique_ids(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = write_sources(tmp_path / "a"), write_sources(tmp_path / "b")
    out = str(tmp_path / "data")
    summary = prepare(out, [first[0], second[0]], test_fraction=0.2, build=False)
    ids = [r.id for s in ("train", "test") for r in read(out, "preferences", s)]
    assert len(ids) == len(set(ids)) == 24 and {i.split(".")[0] for i in ids} == {"1", "2"}
    assert set(summary["counts"]) == {"dialogues", "preferences"}


def test_split_groups_keeps_both_splits_nonempty_and_checks_the_fraction():
    assert len(split_groups(["a", "b"], 0.01, 0)) == 1
    assert split_groups(["a", "b", "c"], 0.0, 0) == set()
    with pytest.raises(ValueError, match="test-fraction"):
        split_groups(["a"], 1.0, 0)


def test_a_built_data_dir_is_never_written_into(tmp_path):
    sources = write_sources(tmp_path)
    out = tmp_path / "data"
    out.mkdir()
    (out / "dialogues.train.jsonl").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        prepare(str(out), sources, build=False)


def test_prepare_command_builds_tfds(tmp_path, capsys):
    sources = write_sources(tmp_path, n_hh=6, n_pku=3, n_questions=4)
    out = tmp_path / "data"
    argv = ["data", "prepare", "--out", str(out), "--test-fraction", "0.25"]
    argv += [a for fmt, path in sources for a in (f"--{fmt}", path)]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    captured = capsys.readouterr()
    assert stop.value.code == 0, captured.err
    assert "skipped 1 records: hh: identical transcripts" in captured.out
    assert "(TFDS built)" in captured.out
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["tfds"] == "tfds" and set(summary["counts"]) == {
        "dialogues", "preferences", "rule_ratings", "prompts"}
    assert {"sparrow_dialogues", "sparrow_preferences", "sparrow_rule_ratings",
            "sparrow_prompts"} <= set(os.listdir(out / "tfds"))  # one TFDS dataset per kind
    with pytest.raises(SystemExit) as stop:  # again into the same dir: refused, exit 2
        main(argv)
    assert stop.value.code == 2 and "not empty" in capsys.readouterr().err


def test_a_title_text_dump_becomes_the_corpus_and_its_index(tmp_path):
    from sparrow_jax.search.data_engine import data_dir_engine
    dump = tmp_path / "wiki.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in [
        {"title": "Heron", "text": "The grey heron is a long-legged wading bird."},
        {"title": "Empty page", "text": "  "},
        {"id": "v1", "title": "Vorlen", "url": "https://x.org/vorlen", "text": "Vorlen is a river."}]))
    sources = write_sources(tmp_path)
    out = str(tmp_path / "data")
    summary = prepare(out, [sources[2], ("corpus", str(dump))], build=True)
    assert summary["counts"]["corpus"] == {"train": 2}
    docs = [json.loads(line) for line in open(os.path.join(out, "corpus.jsonl"))]
    assert docs[0] == {"id": "wiki-1", "title": "Heron", "url": "https://en.wikipedia.org/wiki/Heron",
                       "text": "The grey heron is a long-legged wading bird."}
    assert docs[1]["id"] == "v1" and docs[1]["url"] == "https://x.org/vorlen"
    built = sorted(os.listdir(out))
    assert {"search_index", "corpus.jsonl"} <= set(built)
    engine = data_dir_engine(out)  # the index built with the dir, read as it is
    assert engine.index_dir == os.path.join(out, "search_index")
    assert engine.search("wading bird")[0].doc_id == "wiki-1"
    assert sorted(os.listdir(out)) == built
