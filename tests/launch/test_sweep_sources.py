"""Sweeps are checked against the checkpoints their members start from, at expansion.

Also: every shipped experiment's get_sweep() expands and validates for every variant,
the way it is meant to be launched (rl configs with shared sft / reward-model workdirs).
"""
import glob
import json
import os
import textwrap

import pytest

from sparrow_jax import sweep_sources, sweeps
from sparrow_jax.config import load_experiment, load_experiment_module
from sparrow_jax.sweeps import SweepError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "experiments", "tiny_cpu.py")
SHARED_SOURCES = ["--config.train.init_from=gs://b/sft", "--config.rl.pref_rm_from=gs://b/pref_rm",
                  "--config.rl.rule_rm_from=gs://b/rule_rm"]


def shipped_sweeps():
    """(experiment path, variant) for every experiments/*.py with a get_sweep()."""
    out = []
    for path in sorted(glob.glob(os.path.join(REPO, "experiments", "*.py"))):
        module = load_experiment_module(path)
        if not hasattr(module, "get_sweep"):
            continue
        variants = getattr(module, "MESHES", None) or getattr(module, "STAGE_SCHEDULES", None)
        assert variants, f"{path}: no MESHES / STAGE_SCHEDULES to list its variants"
        out += [(path, v) for v in sorted(variants)]
    return out


SHIPPED = shipped_sweeps()


def test_every_experiment_file_is_covered():
    names = {os.path.basename(p) for p, _ in SHIPPED}
    assert names == {"tiny_cpu.py", "chinchilla_1b.py", "chinchilla_7b.py", "sparrow_70b.py",
                     "gemma_2b.py", "llama3_2_1b.py"}


@pytest.mark.parametrize("path,variant", SHIPPED, ids=[f"{os.path.basename(p)}:{v}"
                                                        for p, v in SHIPPED])
def test_shipped_sweep_expands_and_validates(path, variant):
    spec = f"{path}:{variant}"
    cfg = load_experiment(spec)
    root = "gs://bucket/sweep" if path != TINY else "/tmp/sweep"
    members = sweeps.plan(spec, root)
    assert len(members) >= 2 and len({m.workdir for m in members}) == len(members)
    if cfg.train.stage == "rl" and path != TINY:
        # Pod rl sweeps are launched from one sft and one pair of RM workdirs.
        assert len(sweeps.plan(spec, root, SHARED_SOURCES)) == len(members)


@pytest.mark.parametrize("variant", ["sft", "pref_rm", "rule_rm", "rl"])
def test_tiny_sweep_with_a_shared_init_from_is_rejected_naming_the_key(variant):
    with pytest.raises(SweepError) as err:
        sweeps.plan(f"{TINY}:{variant}", "/r", ["--config.train.init_from=runs/sft"])
    message = str(err.value)
    assert "model.n_frozen_layers" in message and "train.init_from='runs/sft'" in message
    assert "sweep members 0 (learning_rate=0.001,n_frozen_layers=1) and 1" in message


def write_experiment(tmp_path, sweep_body):
    path = tmp_path / "exp.py"
    path.write_text(textwrap.dedent(f"""
        from sparrow_jax.config import default_config
        from sparrow_jax.sweeps import chain, product, sweep_axis, zip_axes

        def get_config():
            cfg = default_config()
            cfg.train.stage = "rl"
            return cfg

        def get_sweep():
            return {sweep_body}
    """))
    return str(path)


def test_model_may_vary_with_its_own_source_and_free_keys_may_vary(tmp_path):
    path = write_experiment(tmp_path, """zip_axes(
        sweep_axis("train.init_from", ["runs/sft_a", "runs/sft_b"]),
        sweep_axis("model.n_frozen_layers", [1, 2]))""")
    assert len(sweeps.plan(path, "/r")) == 2
    path = write_experiment(tmp_path, 'sweep_axis("model.remat", ["none", "full"])')
    assert len(sweeps.plan(path, "/r", ["--config.train.init_from=runs/sft"])) == 2


def test_a_shared_reward_model_workdir_is_a_source_too(tmp_path):
    path = write_experiment(tmp_path, """zip_axes(
        sweep_axis("train.init_from", ["runs/sft_a", "runs/sft_b"]),
        sweep_axis("model.d_ff", [256, 512]))""")
    with pytest.raises(SweepError, match=r"rl\.rule_rm_from='runs/rule_rm' but set model\.d_ff "
                                         r"to 256 and 512"):
        sweeps.plan(path, "/r", ["--config.rl.rule_rm_from=runs/rule_rm"])


def write_checkpoint_meta(workdir, step, model):
    meta = workdir / "checkpoints" / str(step) / "meta"
    meta.mkdir(parents=True)
    (meta / "metadata").write_text(json.dumps({"config": {"model": model}, "stage": "sft"}))
    return str(meta / "metadata")


def test_a_local_source_checkpoint_must_have_the_members_model(tmp_path):
    path = write_experiment(tmp_path, 'sweep_axis("train.learning_rate", [1e-3, 3e-4])')
    model = load_experiment(path).model.to_dict()
    sft = tmp_path / "sft"
    write_checkpoint_meta(sft, 100, {**model, "d_model": 999})
    newest = write_checkpoint_meta(sft, 200, {**model, "remat": "full"})  # a free key differs
    (sft / "checkpoints" / "300").mkdir()  # a step without meta (being written): skipped
    assert len(sweeps.plan(path, "/r", [f"--config.train.init_from={sft}"])) == 2
    # The newest readable step is the one compared.
    with pytest.raises(SweepError) as err:
        sweeps.plan(path, "/r", [f"--config.train.init_from={sft}", "--config.model.d_ff=128"])
    message = str(err.value)
    assert message.startswith("sweep member 0 (learning_rate=0.001): model.d_ff=128 but "
                              f"train.init_from={str(sft)!r} was trained with model.d_ff=")
    assert newest in message


def test_a_missing_or_remote_source_is_not_read(tmp_path):
    assert sweep_sources.latest_stored_config(str(tmp_path / "nothing")) is None
    assert sweep_sources.latest_stored_config("gs://bucket/sft") is None


def test_free_model_keys_change_no_param_shape():
    """What FREE_MODEL_KEYS claims: a run may set these apart from its source checkpoint."""
    import jax

    from sparrow_jax.config import default_config
    from sparrow_jax.model import hydra

    def shapes(model):
        tree = jax.eval_shape(lambda r: hydra.init_params(model, r), jax.random.PRNGKey(0))
        return jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), tree)

    base = default_config().model
    reference = shapes(base)
    changed = {"compute_dtype": "float32", "remat": "full", "causal_block": 32,
               "scan_layers": not base.scan_layers, "max_len": base.max_len // 2,
               "init_std": 0.5}
    assert set(changed) == sweep_sources.FREE_MODEL_KEYS
    for key, value in changed.items():
        model = base.copy_and_resolve_references()
        model[key] = value
        assert shapes(model) == reference, key
    model = base.copy_and_resolve_references()
    model.n_frozen_layers = base.n_frozen_layers - 1  # a defining key does change them
    assert shapes(model) != reference
