"""Fingerprints of param trees: equal trees agree, a one-ulp change anywhere does not, the
sharding (one device, a mesh, two processes) does not matter."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from multiprocess_runs import one_and_two_processes
from sparrow_jax.train.fingerprint import fingerprint, leaf_lanes

SCRIPT = os.path.join(os.path.dirname(__file__), "multiprocess_frozen_sources.py")


def _tree(seed=0):
    rs = np.random.RandomState(seed)
    return {"embedding": rs.randn(16, 8).astype(np.float32),
            "layers": {"w": rs.randn(2, 8, 4).astype(jnp.bfloat16),
                       "scale": rs.randn(2, 4).astype(np.float16)},
            "count": np.int32(7), "mask": rs.rand(5) < 0.5}


def _one_ulp(x: np.ndarray, index) -> np.ndarray:
    out = np.array(x, copy=True)
    if out.dtype == np.bool_:
        out[index] = ~out[index]
    elif np.issubdtype(out.dtype, np.integer):
        out[index] += 1
    else:
        wide = out.astype(np.float32)
        out[index] = np.nextafter(wide[index], np.float32(np.inf)).astype(out.dtype)
        if out[index] == x[index]:  # float32 next value rounds back in a narrower type
            bits = out.view(f"u{out.dtype.itemsize}")
            bits[index] += 1
    assert not np.array_equal(out.view(f"u{out.dtype.itemsize}"), np.asarray(x).view(f"u{out.dtype.itemsize}"))
    return out


def test_equal_trees_give_equal_fingerprints():
    a, b = _tree(), jax.tree.map(jnp.asarray, _tree())  # host copy vs device copy
    assert fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 32
    assert fingerprint(a) != fingerprint(_tree(seed=1))


@pytest.mark.parametrize("where", ["first", "last", "middle"])
def test_one_ulp_in_any_leaf_changes_every_lane(where):
    tree = _tree()
    base = fingerprint(tree)
    paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in paths_leaves:
        leaf = np.asarray(leaf)
        flat = {"first": 0, "last": leaf.size - 1, "middle": leaf.size // 2}[where]
        index = np.unravel_index(flat, leaf.shape) if leaf.shape else ()
        changed = _one_ulp(leaf, index)
        other = jax.tree_util.tree_map_with_path(lambda p, x: changed if p == path else x, tree)
        assert fingerprint(other) != base, jax.tree_util.keystr(path)
        assert np.all(leaf_lanes(changed) != leaf_lanes(leaf)), jax.tree_util.keystr(path)


def test_swaps_reshapes_and_dtypes_change_it():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    swapped = x.copy()
    swapped[0, 1], swapped[2, 3] = x[2, 3], x[0, 1]
    assert fingerprint({"w": swapped}) != fingerprint({"w": x})
    assert fingerprint({"w": x.reshape(6, 4)}) != fingerprint({"w": x})
    assert fingerprint({"w": x.T.copy()}) != fingerprint({"w": x})
    assert fingerprint({"w": x.view(np.int32)}) != fingerprint({"w": x})  # same bits, other dtype
    assert fingerprint({"v": x}) != fingerprint({"w": x})  # other path


def test_sharded_arrays_reduce_on_their_devices_to_the_host_value():
    tree = _tree()
    expected = fingerprint(tree)
    for shape, names, spec in (((8,), ("fsdp",), P("fsdp")), ((2, 4), ("data", "tensor"), P("data", "tensor"))):
        mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))
        sharded = jax.tree.map(
            lambda x: jax.device_put(x, NamedSharding(mesh, spec if np.ndim(x) == 2 and x.shape[0] % 8 == 0
                                                      else P())), tree)
        assert len(sharded["embedding"].sharding.device_set) == 8
        assert not sharded["embedding"].sharding.is_fully_replicated
        assert fingerprint(sharded) == expected



def test_two_processes_fingerprint_save_and_reread_frozen_parts_like_one(tmp_path):
    """Global arrays spanning two processes: fingerprints, an rl checkpoint without its frozen parts,
    and a restore that re-reads them from the source (each process its own shards) agree with one
    process holding all 8 devices."""
    ref, outs = one_and_two_processes(SCRIPT, ["--root", str(tmp_path / "one")],
                                      ["--root", str(tmp_path / "two")])
    assert set(ref["fingerprints"]) == {"trunk", "teacher", "pref_rm", "rule_rm"}
    assert ref["restored"]["frozen"] == ref["fingerprints"]
    assert ref["restored"]["params"] == ref["restored"]["params_before"]
    for o in outs:
        assert o["devices"] == 8
        assert o["fingerprints"] == ref["fingerprints"]
        assert o["restored"] == ref["restored"]
        assert o["restored"]["same_shardings"] and o["restored"]["refs_equal"] and o["restored"]["step"] == 5
    # The rl checkpoint stores no frozen part.
    for root in ("one", "two"):
        with open(tmp_path / root / "rl" / "checkpoints" / "5" / "state" / "_METADATA") as f:
            stored = f.read()
        assert "frozen" not in stored and "policy" in stored
