"""The logical-axis resolver, the unsharded-params report and mesh construction."""
import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from sparrow_jax import sharding as shd
from sparrow_jax.config import ConfigError, default_config, default_logical_axis_rules

RULES = tuple(default_logical_axis_rules())


@pytest.fixture(scope="module")
def mesh():
    cfg = default_config()
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 2
    return shd.make_mesh(cfg.mesh)


def test_make_mesh_fills_minus_one_with_auto_axes():
    cfg = default_config()
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = -1, 2, 2
    mesh = shd.make_mesh(cfg.mesh)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    one = shd.make_mesh(default_config().mesh, jax.devices()[:1])
    assert dict(one.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_make_mesh_that_does_not_divide_devices_names_mesh_shape():
    cfg = default_config()
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 1, 3, 2
    with pytest.raises(ConfigError, match="mesh.shape"):
        shd.make_mesh(cfg.mesh)
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp = -1, 3
    with pytest.raises(ConfigError, match="mesh.shape"):
        shd.make_mesh(cfg.mesh)


@pytest.mark.parametrize("logical, expected", [
    (("embed", "mlp"), P("fsdp", "tensor")),
    (("mlp", "embed"), P("tensor", "fsdp")),
    (("vocab", "embed"), P("tensor", "fsdp")),
    (("layers", "embed", "heads", "kv"), P(None, "fsdp", "tensor", None)),
    # 'batch' takes data and fsdp, so 'embed' (-> fsdp) cannot use fsdp again.
    (("batch", "length", "embed"), P(("data", "fsdp"), None, None)),
    # Two logical names that both want 'tensor': the second one is replicated.
    (("heads", "mlp"), P("tensor", None)),
    ((None, "unknown_name"), P(None, None)),
])
def test_logical_to_mesh_spec_known_cases(logical, expected):
    assert shd.logical_to_mesh_spec(P(*logical), RULES) == expected


def test_first_free_rule_wins():
    rules = (("embed", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"))
    assert shd.logical_to_mesh_spec(P("mlp", "embed"), rules) == P("tensor", "fsdp")
    assert shd.logical_to_mesh_spec(P("embed", "mlp"), rules) == P("tensor", None)


def test_shardings_for_tree_and_non_divisible_fallback(mesh):
    axes = {"w": P("embed", "mlp"), "odd": P("embed", "mlp"), "b": P("mlp"), "none": None}
    shapes = {"w": jax.ShapeDtypeStruct((4, 6), np.float32),
              "odd": jax.ShapeDtypeStruct((3, 6), np.float32),
              "b": jax.ShapeDtypeStruct((5,), np.float32),
              "none": jax.ShapeDtypeStruct((2,), np.float32)}
    shardings, fallbacks = shd.resolve_shardings(axes, shapes, mesh, RULES)
    assert shardings["w"].spec == P("fsdp", "tensor")
    assert shardings["odd"].spec == P(None, "tensor")  # 3 not divisible by fsdp=2
    assert shardings["b"].spec == P(None)
    assert shardings["none"].spec == P()
    reported = {(f.path, f.dim) for f in fallbacks}
    assert reported == {("odd", 0), ("b", 0)}
    assert "odd: dim 0 ('embed', size 3) is not divisible by fsdp=2" in str(fallbacks[1]) + \
        str(fallbacks[0])
    # shardings_for returns the same tree (and logs the fallbacks).
    same = shd.shardings_for(axes, mesh, RULES, shapes)
    assert jax.tree.map(lambda s: s.spec, same) == jax.tree.map(lambda s: s.spec, shardings)


def test_unsharded_report_lists_params_no_rule_shards(mesh):
    axes = {"big": P("embed", "mlp"), "norm": P("norm_axis"), "head": P("embed", "classes"),
            "bias": P("mlp")}
    shapes = {"big": jax.ShapeDtypeStruct((8, 16), np.float32),
              "norm": jax.ShapeDtypeStruct((64,), np.float32),
              "head": jax.ShapeDtypeStruct((8, 2), np.float32),
              "bias": jax.ShapeDtypeStruct((16,), np.float32)}
    rows = shd.unsharded_params_report(axes, shapes, mesh, RULES)
    assert [r["path"] for r in rows] == ["norm"]  # 'head' is sharded on its embed dim
    assert rows[0]["bytes"] == 64 * 4 and rows[0]["shape"] == (64,)
    text = shd.format_unsharded_report(rows)
    assert "norm" in text and "1 params" in text
    rows2 = shd.unsharded_params_report({"a": P("kv"), "b": P("kv")},
                                        {"a": jax.ShapeDtypeStruct((4,), np.float32),
                                         "b": jax.ShapeDtypeStruct((40,), np.float32)},
                                        mesh, RULES)
    assert [r["path"] for r in rows2] == ["b", "a"]  # largest first


def test_hydra_params_resolve_without_errors(mesh):
    from sparrow_jax.model import hydra
    from sparrow_jax.config import ROLES
    cfg = default_config().model
    axes = hydra.param_logical_axes(cfg, roles=ROLES)
    shapes = jax.eval_shape(lambda r: hydra.init_params(cfg, r, roles=ROLES),
                            jax.random.PRNGKey(0))
    shardings, fallbacks = shd.resolve_shardings(axes, shapes, mesh, RULES)
    assert not fallbacks
    assert jax.tree.structure(shardings) == jax.tree.structure(shapes)


def test_batch_spec_and_activation_context(mesh):
    assert shd.batch_spec(2, RULES) == P(("data", "fsdp"), None)
    assert shd.batch_spec(3, RULES, leading=1) == P(None, ("data", "fsdp"), None)

    @jax.jit
    def f(x):
        return shd.constrain(x * 2, ("batch", "embed"))

    with shd.activation_sharding(mesh, RULES):
        y = f(np.ones((8, 4), np.float32))
    assert y.sharding.spec[0] == ("data", "fsdp")
