"""TFDS builders: JSONL -> array_record -> as_data_source gives back the same records, without TF."""
import os
import sys

import pytest

from sparrow_jax.data import schemas, tfds_builders
from data_helpers import RULES, write_world


@pytest.fixture(scope="module")
def built(tmp_path_factory, records):
    jsonl_dir = write_world(tmp_path_factory.mktemp("world"), records)
    tfds_dir = os.path.join(jsonl_dir, "tfds")
    builders = tfds_builders.build_all(jsonl_dir, tfds_dir, rule_ids=set(RULES))
    return jsonl_dir, tfds_dir, builders


def test_round_trip_equals_jsonl(built):
    jsonl_dir, tfds_dir, builders = built
    assert set(builders) == set(tfds_builders.BUILDERS)
    for kind in tfds_builders.BUILDERS:
        for split, path in tfds_builders.jsonl_paths(jsonl_dir, kind).items():
            source = tfds_builders.load_source(tfds_dir, kind, split)
            expected = schemas.read_all(path, kind)
            assert len(source) == len(expected) > 0
            assert list(source) == expected, (kind, split)  # same records, same (file) order
            assert source[-1] == expected[-1]
    assert "tensorflow" not in sys.modules


def test_files_are_array_record(built):
    _, tfds_dir, builders = built
    files = os.listdir(builders["preferences"].data_dir)
    assert any(".array_record-" in name for name in files), files


def test_rebuild_picks_up_new_data(built, tmp_path, records):
    jsonl_dir = write_world(tmp_path / "w", {k: v[:6] for k, v in records.items()})
    tfds_dir = tmp_path / "tfds"
    tfds_builders.build_all(jsonl_dir, tfds_dir)
    assert len(tfds_builders.load_source(tfds_dir, "dialogues", "train")) == 3
    write_world(jsonl_dir, {k: v[:10] for k, v in records.items()})
    tfds_builders.build_all(jsonl_dir, tfds_dir)
    assert len(tfds_builders.load_source(tfds_dir, "dialogues", "train")) == 5


def test_bad_line_fails_the_build_and_keeps_the_old_data(tmp_path, records):
    jsonl_dir = write_world(tmp_path / "w", {k: v[:4] for k, v in records.items()})
    tfds_builders.build_all(jsonl_dir, tmp_path / "tfds", rule_ids=set(RULES))
    path = os.path.join(jsonl_dir, "rule_ratings.test.jsonl")
    with open(path, "a") as f:
        f.write('{"id": "bad", "dialogue": [{"role": "user", "text": "x"}], "rule_id": "no_jokes", '
                '"broken": true}\n')
    with pytest.raises(schemas.SchemaError) as info:
        tfds_builders.build_all(jsonl_dir, tmp_path / "tfds", rule_ids=set(RULES))
    assert (info.value.path, info.value.line, info.value.field) == (path, 3, "rule_id")
    for kind in ("corpus", "dialogues", "rule_ratings"):
        assert len(tfds_builders.load_source(tmp_path / "tfds", kind, "train")) > 0


def test_no_data_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no JSONL data files"):
        tfds_builders.build_all(tmp_path, tmp_path / "tfds")
