"""Checkpoint fallback, cross-mesh restore and shape-mismatch errors."""
import glob
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from sparrow_jax.train.checkpoints import Checkpointer, CheckpointError


def _mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def _state(mesh, spec, scale=1.0):
    sharding = NamedSharding(mesh, spec)
    w = jax.device_put(jnp.arange(128.0).reshape(16, 8) * scale, sharding)
    return {"params": {"w": w}, "step": jax.device_put(jnp.int32(7), NamedSharding(mesh, P()))}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_truncated_latest_falls_back_with_warning(tmp_path, caplog):
    mesh = _mesh((8,), ("fsdp",))
    ckpt = Checkpointer(str(tmp_path), every_steps=1, keep=3)
    for step in (1, 2):
        ckpt.save(step, _state(mesh, P("fsdp"), scale=step), meta={"data": {"pos": step}},
                  assets={"tokenizer.model": b"\x00\x01tok"})
    ckpt.wait()
    # Truncate every data file of the latest checkpoint.
    data_files = [p for p in glob.glob(f"{tmp_path}/2/state/**/d/*", recursive=True)
                  if os.path.isfile(p)]
    assert data_files
    for path in data_files:
        with open(path, "r+b") as f:
            f.truncate(3)
    with caplog.at_level(logging.WARNING):
        restored = Checkpointer(str(tmp_path)).restore_latest(_abstract(_state(mesh, P("fsdp"))))
    assert restored.step == 1
    assert restored.meta["data"]["pos"] == 1
    assert restored.assets["tokenizer.model"] == b"\x00\x01tok"
    np.testing.assert_array_equal(restored.state["params"]["w"], np.arange(128.0).reshape(16, 8))
    assert any("corrupt" in r.message for r in caplog.records)


def test_restore_onto_another_mesh(tmp_path):
    fsdp_mesh = _mesh((8,), ("fsdp",))
    saved = _state(fsdp_mesh, P("fsdp"))
    ckpt = Checkpointer(str(tmp_path), every_steps=1)
    ckpt.save(1, saved, meta={})
    ckpt.wait()
    other_mesh = _mesh((2, 4), ("data", "tensor"))
    target = _abstract(_state(other_mesh, P("data", "tensor")))
    restored = Checkpointer(str(tmp_path)).restore_latest(target)
    w = restored.state["params"]["w"]
    assert w.sharding.mesh.shape == {"data": 2, "tensor": 4}
    np.testing.assert_array_equal(np.asarray(w), np.asarray(saved["params"]["w"]))


def test_shape_mismatch_says_what_differs(tmp_path):
    mesh = _mesh((8,), ("fsdp",))
    ckpt = Checkpointer(str(tmp_path), every_steps=1)
    ckpt.save(1, _state(mesh, P("fsdp")), meta={"config": {"model": {"d_model": 8}}})
    ckpt.wait()
    wrong = {"params": {"w": jax.ShapeDtypeStruct((16, 4), jnp.float32,
                                                  sharding=NamedSharding(mesh, P()))},
             "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))}
    with pytest.raises(CheckpointError) as err:
        Checkpointer(str(tmp_path)).restore_latest(
            wrong, config_json=json.dumps({"model": {"d_model": 4}}))
    message = str(err.value)
    assert "params/w stored (16, 8) vs expected (16, 4)" in message
    assert "model.d_model: checkpoint 8, config 4" in message


def test_no_checkpoint_gives_none(tmp_path):
    assert Checkpointer(str(tmp_path / "empty")).restore_latest({}) is None
