"""The non-finite guard in the loop, and a TrainState moving between meshes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loop_helpers import make_world, tiny_config
from sparrow_jax import sharding as shd
from sparrow_jax.train import loop, run_control, stages
from sparrow_jax.train.checkpoints import Checkpointer
from sparrow_jax.train.metrics import read_metrics

POISON = -7  # a token id no pipeline produces: marks the injected batch


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(str(tmp_path_factory.mktemp("world") / "toy"))


@pytest.fixture
def poisoned_losses(monkeypatch):
    """Losses are NaN on batches whose first token is POISON; `poison` picks which steps."""
    real_loss_fn = stages.loss_fn_for_stage
    real_device_batch = stages.device_batch
    calls = {"n": 0, "poison": set()}

    def loss_fn_for_stage(stage, model_cfg, **kwargs):
        inner = real_loss_fn(stage, model_cfg, **kwargs)

        def loss_fn(params, batch, rng):
            loss, metrics = inner(params, batch, rng)
            return jnp.where(batch["tokens_BxL"][0, 0] == POISON, jnp.nan, loss), metrics
        return loss_fn

    def device_batch(stage, batch):
        calls["n"] += 1
        out = real_device_batch(stage, batch)
        if calls["n"] in calls["poison"]:
            out["tokens_BxL"] = out["tokens_BxL"].copy()
            out["tokens_BxL"][0, 0] = POISON
        return out

    monkeypatch.setattr(stages, "loss_fn_for_stage", loss_fn_for_stage)
    monkeypatch.setattr(stages, "device_batch", device_batch)
    return calls


def test_nan_batch_is_skipped_and_counted(world, tmp_path, poisoned_losses):
    poisoned_losses["poison"] = {3}
    cfg = tiny_config("sft", world, steps=6, **{"train.log_every": 1})
    summary = loop.train_stage(cfg, str(tmp_path))
    assert summary["finished"] and summary["nonfinite_total"] == 1
    records = read_metrics(str(tmp_path / "logs"), "train")
    assert [r["nonfinite_total"] for r in records] == [0, 0, 1, 1, 1, 1]
    assert np.isnan(records[2]["loss"]) and np.isfinite(records[3]["loss"])


def test_repeated_nans_stop_with_error_and_keep_the_last_checkpoint(world, tmp_path,
                                                                   poisoned_losses):
    poisoned_losses["poison"] = {5, 6, 7}
    cfg = tiny_config("sft", world, steps=20, **{"train.checkpoint_every": 4,
                                                 "train.max_nonfinite_in_row": 3})
    with pytest.raises(run_control.TrainingError, match="3 non-finite steps in a row"):
        loop.train_stage(cfg, str(tmp_path))
    assert Checkpointer(str(tmp_path / "checkpoints")).steps() == [4]


def test_train_state_saved_on_fsdp_mesh_restores_on_data_tensor_mesh(world, tmp_path):
    cfg = tiny_config("sft", world)
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 1, 8, 1
    fsdp_mesh = shd.make_mesh(cfg.mesh)
    saved = stages.build_stage(cfg, fsdp_mesh, log_unsharded=False).init_fn(jax.random.PRNGKey(0))
    ckpt = Checkpointer(str(tmp_path), every_steps=1)
    ckpt.save(1, saved, meta={}, force=True)
    ckpt.close()

    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 1, 4
    other_mesh = shd.make_mesh(cfg.mesh)
    target = stages.build_stage(cfg, other_mesh, log_unsharded=False).abstract_state
    restored = Checkpointer(str(tmp_path)).restore_latest(target).state
    moved = 0
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding.mesh.shape == {"data": 2, "fsdp": 1, "tensor": 4}
        moved += b.sharding.spec != a.sharding.spec
    assert moved > 0  # some leaves really changed layout


def test_evaluation_waits_for_every_started_save(world, tmp_path, monkeypatch):
    """Evaluation imports tensorflow_datasets on its first read; etils' process-wide lazy-import
    hook then broke orbax's background save threads. So no save may be in flight during eval."""
    from sparrow_jax.train.stage_eval import StageEvaluator
    events = []
    real_save, real_wait, real_call = Checkpointer.save, Checkpointer.wait, StageEvaluator.__call__

    def save(self, step, *args, **kwargs):
        started = real_save(self, step, *args, **kwargs)
        if started:
            events.append(("save", step))
        return started

    def wait(self):
        real_wait(self)
        events.append(("wait",))

    def evaluate(self, *args, **kwargs):
        events.append(("eval",))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", save)
    monkeypatch.setattr(Checkpointer, "wait", wait)
    monkeypatch.setattr(StageEvaluator, "__call__", evaluate)
    cfg = tiny_config("sft", world, steps=4, **{"train.checkpoint_every": 2,
                                                "train.eval_every": 2})
    loop.train_stage(cfg, str(tmp_path))
    assert ("eval",) in events and ("save", 4) in events
    for index, event in enumerate(events):
        if event == ("eval",):
            pending = [e for e in events[:index] if e[0] == "save"]
            waited_after_last_save = ("wait",) in events[events.index(pending[-1]):index] \
                if pending else True
            assert waited_after_last_save, f"evaluation started with a save in flight: {events}"
