"""A gs:// workdir: training logs and the summary land in the bucket, never in a local "gs:" dir.

Cloud Storage is faked with an fsspec filesystem over a local directory, registered for the
gs protocol (what etils.epath uses, through gcsfs on a TPU VM). Orbax's checkpoints to a
bucket go through google-cloud-storage and tensorstore's own GCS driver, which this
machine cannot reach: they are not exercised here.
"""
import json
import struct

import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry as fsspec_registry

from sparrow_jax.evaluation.checkpoint_params import WorkdirError, read_params
from sparrow_jax.train import storage
from sparrow_jax.train.init_from import checkpoint_dir
from sparrow_jax.train.metrics import MetricsWriter, read_metrics
from sparrow_jax.train.run_control import write_summary


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """gs://NAME/... maps to tmp_path/bucket/NAME/...; the test runs in an empty tmp_path/cwd."""
    root = tmp_path / "bucket"
    root.mkdir()

    class FakeGCS(DirFileSystem):
        protocol = ("gs", "gcs")
        cachable = False

        def __init__(self, *args, finalize_on_close=None, **kwargs):
            # auto_mkdir: a bucket has no directories to create before writing an object.
            super().__init__(path=str(root), fs=LocalFileSystem(auto_mkdir=True), **kwargs)

    for name in ("gs", "gcs"):
        monkeypatch.setitem(fsspec_registry, name, FakeGCS)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield root
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    assert list(cwd.iterdir()) == [], "something wrote a local copy of the gs:// path"


def _event_records(data: bytes) -> int:
    """How many TFRecord records an event file holds (length, crc, payload, crc each)."""
    count, offset = 0, 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        offset += 8 + 4 + length + 4
        count += 1
    assert offset == len(data), "event file ends inside a record"
    return count


def test_metrics_of_a_resumed_run_append_in_the_bucket(bucket):
    logdir = "gs://runs/rl/logs"
    first = MetricsWriter(logdir, enabled=True)
    first.write(1, {"loss": 2.0})
    first.write(2, {"loss": 1.5, "kl": 0.01})
    first.close()
    resumed = MetricsWriter(logdir, enabled=True)  # a relaunch after preemption
    resumed.write(3, {"loss": 1.0}, split="eval")
    resumed.close()

    assert [(r["step"], r["split"]) for r in read_metrics(logdir)] == [
        (1, "train"), (2, "train"), (3, "eval")]
    on_disk = (bucket / "runs/rl/logs/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in on_disk] == [1, 2, 3]
    events = [p for p in (bucket / "runs/rl/logs").iterdir() if p.name.startswith("events.")]
    assert events, "no TensorBoard event file in the bucket"
    # Each writer: one file-version record, then one record per scalar (4 scalars in all).
    assert sum(_event_records(p.read_bytes()) for p in events) >= 4 + 1


def test_summary_goes_to_the_bucket(bucket):
    write_summary("gs://runs/sft", {"stage": "sft", "step": 9, "finished": True})
    stored = json.loads((bucket / "runs/sft/summary.json").read_text())
    assert stored == {"stage": "sft", "step": 9, "finished": True}


def test_checkpoint_dir_keeps_a_url_and_makes_a_local_path_absolute(bucket, tmp_path):
    assert checkpoint_dir("gs://runs/rl") == "gs://runs/rl/checkpoints"
    assert checkpoint_dir("gs://runs/rl/") == "gs://runs/rl/checkpoints"
    assert checkpoint_dir("rl") == str(tmp_path / "cwd" / "rl" / "checkpoints")


def test_a_rewritten_object_flushes_only_what_changed(bucket):
    target = storage.run_path("gs://runs/log.txt")
    log = storage.open_append("gs://runs/log.txt")
    log.write("a\n")
    assert not target.exists()  # nothing reaches the bucket before a flush
    log.flush()
    assert target.read_text() == "a\n"
    target.write_text("changed elsewhere\n")
    log.flush()  # nothing new to write: the object is left alone
    assert target.read_text() == "changed elsewhere\n"
    log.write("b\n")
    log.close()
    assert target.read_text() == "a\nb\n"


def test_eval_of_a_bucket_workdir_says_to_copy_it_down(bucket):
    with pytest.raises(WorkdirError, match=r"gs://runs/rl.*gcloud storage rsync"):
        read_params("gs://runs/rl")
