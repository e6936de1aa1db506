"""The row helpers of sparrow_jax.distributed on 8 devices of one process (the two-process
runs use the same code: tests/train_loop/test_multiprocess_recipe.py)."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sparrow_jax import distributed


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


def test_row_blocks_are_the_batch_shards(mesh):
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    assert distributed.row_blocks(rows, 16) == [slice(4 * i, 4 * i + 4) for i in range(4)]
    assert distributed.row_blocks(NamedSharding(mesh, P()), 16) == [slice(0, 16)]


def test_host_rows_reads_the_rows_of_any_layout(mesh):
    x = np.arange(16 * 6, dtype=np.float32).reshape(16, 6)
    for spec in (P(("data", "fsdp")), P(("data", "fsdp"), "tensor"), P(None, "tensor"), P()):
        arr = jax.device_put(x, NamedSharding(mesh, spec))
        np.testing.assert_array_equal(distributed.host_rows(arr, slice(4, 12)), x[4:12])


def test_call_on_rows_and_join(mesh):
    batch = {"a": np.arange(8, dtype=np.int32), "b": np.ones((8, 3), np.float32)}
    out = distributed.call_on_rows(lambda b: {"s": b["a"] * 2, "t": b["b"].sum(1)}, batch, mesh)
    np.testing.assert_array_equal(out["s"], np.arange(8) * 2)
    np.testing.assert_array_equal(out["t"], np.full(8, 3.0))
    joined = distributed.join_row_blocks([(0, 3, np.arange(3)), (3, 8, np.arange(3, 8))], 8)
    np.testing.assert_array_equal(joined, np.arange(8))
    with pytest.raises(ValueError, match=r"rows \[7\] of 8 came from no process"):
        distributed.join_row_blocks([(0, 7, np.arange(7))], 8)


def test_single_process_gathers_are_the_input():
    assert distributed.allgather_objects({"x": 1}) == [{"x": 1}]
    assert distributed.any_process(True) and not distributed.any_process(False)
    np.testing.assert_array_equal(distributed.allgather_rows(np.arange(3)), np.arange(3))
