"""`sparrow import` on the committed tiny Llama / Gemma fixtures (tests/fixtures/hf): the
imported hydra, read back the way `train.init_from` reads it, gives the reference logits
(1e-4, float32) and the reference's 32 greedy tokens, and its cached decode equals its full
forward. Broken checkpoints fail with errors that name the tensor and the config field."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparrow_jax import sharding as shd
from sparrow_jax.config import load_experiment
from sparrow_jax.hf.families import HFImportError
from sparrow_jax.hf.importer import run_import
from sparrow_jax.model import hydra
from sparrow_jax.train import init_from

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
F32 = ["--config.model.compute_dtype=float32"]


def _reference(family):
    ref = os.path.join(FIXTURES, family, "reference")
    return {name[:-4]: np.load(os.path.join(ref, name)) for name in os.listdir(ref)}


def _greedy(params, cfg, prompt_1xP, n_new):
    """n_new greedy tokens after the prompt with the KV cache (prefill, then a scan of
    one-token decodes; one compiled program), and the logits each token was read from."""
    length = prompt_1xP.shape[1]

    @jax.jit
    def run(params, prompt_1xP):
        cache = hydra.init_cache(cfg, batch=1, cache_len=length + n_new)
        out, cache = hydra.extend(params, cfg, prompt_1xP, jnp.arange(length)[None], None,
                                  cache)

        def step(carry, t):
            logits_V, cache = carry
            token = jnp.argmax(logits_V).astype(jnp.int32)
            out, cache = hydra.extend(params, cfg, token[None, None], (length + t)[None, None],
                                      None, cache)
            return (out["policy"][0, -1], cache), (token, logits_V)

        (last_V, _), (tokens, logits) = jax.lax.scan(step, (out["policy"][0, -1], cache),
                                                     jnp.arange(n_new - 1))
        return (jnp.append(tokens, jnp.argmax(last_V)),
                jnp.concatenate([logits, last_V[None]]))

    tokens, logits = run(params, jnp.asarray(prompt_1xP))
    return np.asarray(tokens), np.asarray(logits)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_imported_model_matches_reference(family, tmp_path):
    out = str(tmp_path / family)
    report = run_import(os.path.join(FIXTURES, family), out, n_frozen_layers=1, overrides=F32)
    assert report["family"] == family and report["tensors"] > 0
    # What `sparrow train <out>/experiment.py:sft --config.train.init_from=<out>` reads.
    cfg = load_experiment(os.path.join(out, "experiment.py") + ":sft")
    assert cfg.model.compute_dtype == "float32" and cfg.model.n_frozen_layers == 1
    source = init_from.load_source(out, cfg, shd.make_mesh(cfg.mesh))
    params = source.params
    assert set(params) == {"trunk", "policy"} and source.config["train"]["stage"] == "lm"
    ref = _reference(family)
    forward = jax.jit(lambda p, t, v: hydra.forward(p, cfg.model, t, valid_BxL=v,
                                                    roles=("policy",))["policy"])
    logits = forward(params, jnp.asarray(ref["tokens"]), jnp.asarray(ref["valid"]))
    valid = ref["valid"]
    np.testing.assert_allclose(np.asarray(logits)[valid], ref["logits"][valid],
                               rtol=0, atol=1e-4)
    greedy, decode_logits = _greedy(params, cfg.model, ref["prompt"], ref["greedy"].shape[1])
    np.testing.assert_array_equal(greedy, ref["greedy"][0])
    # Cached decode equals the full forward over prompt + continuation.
    seq = jnp.concatenate([jnp.asarray(ref["prompt"]), jnp.asarray(greedy[None, :-1])], axis=1)
    full = forward(params, seq, jnp.ones(seq.shape, bool))[0]
    np.testing.assert_allclose(decode_logits, full[ref["prompt"].shape[1] - 1:], atol=5e-5)


def _copy_fixture(tmp_path, family="llama"):
    target = str(tmp_path / f"broken_{family}_{len(os.listdir(tmp_path))}")
    shutil.copytree(os.path.join(FIXTURES, family), target,
                    ignore=shutil.ignore_patterns("reference"))
    return target


def _edit_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        hf = json.load(f)
    hf.update(changes)
    with open(path, "w") as f:
        json.dump(hf, f)


def _rewrite_tensors(directory, edit):
    from safetensors.numpy import load_file, save_file
    path = os.path.join(directory, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_errors_name_the_field_and_tensor(tmp_path):
    d = _copy_fixture(tmp_path)
    _edit_config(d, architectures=["MistralForCausalLM"], model_type="mistral")
    with pytest.raises(HFImportError, match="architectures=.*MistralForCausalLM.*supported"):
        run_import(d, str(tmp_path / "a"))

    d = _copy_fixture(tmp_path)
    _edit_config(d, num_key_value_heads=4)
    with pytest.raises(HFImportError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*"
                                            r"num_key_value_heads"):
        run_import(d, str(tmp_path / "b"), n_frozen_layers=1)

    d = _copy_fixture(tmp_path)
    _rewrite_tensors(d, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    with pytest.raises(HFImportError, match=r"model\.layers\.2\.mlp\.up_proj\.weight is missing"):
        run_import(d, str(tmp_path / "c"), n_frozen_layers=1)

    d = _copy_fixture(tmp_path)
    _rewrite_tensors(d, lambda t: t.update({"model.norm.weight": np.ones(32, np.int32)}))
    with pytest.raises(HFImportError, match=r"model\.norm\.weight: dtype I32"):
        run_import(d, str(tmp_path / "e"), n_frozen_layers=1)


def test_sharded_index_reads_the_same_params(tmp_path):
    """model.safetensors.index.json over two shards, one of them bfloat16: same params
    (bf16 rounded) as the single file."""
    from safetensors.numpy import load_file, save_file
    import ml_dtypes
    from sparrow_jax.hf.importer import import_config, load_params
    src = os.path.join(FIXTURES, "gemma")
    d = str(tmp_path / "sharded")
    os.makedirs(d)
    shutil.copy(os.path.join(src, "config.json"), d)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    names = sorted(tensors)
    half = {n: tensors[n] for n in names[: len(names) // 2]}
    rest = {n: tensors[n].astype(ml_dtypes.bfloat16) for n in names[len(names) // 2:]}
    save_file(half, os.path.join(d, "a.safetensors"))
    save_file(rest, os.path.join(d, "b.safetensors"))
    index = {"weight_map": {**{n: "a.safetensors" for n in half},
                            **{n: "b.safetensors" for n in rest}}}
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    cfg, _ = import_config(src, 1, F32)
    shardings = jax.tree.map(lambda _: None, jax.eval_shape(
        lambda: hydra.init_params(cfg.model, jax.random.PRNGKey(0), ("policy",))))
    whole, _ = load_params(src, cfg, shardings)
    sharded, stats = load_params(d, cfg, shardings)
    rounded = jax.tree.map(lambda a: np.asarray(a, ml_dtypes.bfloat16).astype(np.float32), whole)
    for (path, a), b, r in zip(jax.tree_util.tree_leaves_with_path(sharded),
                               jax.tree.leaves(whole), jax.tree.leaves(rounded)):
        a, b, r = np.asarray(a), np.asarray(b), np.asarray(r)
        assert ((a == b) | (a == r)).all(), jax.tree_util.keystr(path)
    assert stats["tensors"] == len(names)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(sharded),
                                                        jax.tree.leaves(whole)))


def test_cli_reports_a_bad_directory(tmp_path, capsys):
    from sparrow_jax.cli import main
    d = _copy_fixture(tmp_path)
    _edit_config(d, architectures=["GPT2LMHeadModel"])
    with pytest.raises(SystemExit) as exit_info:
        main(["import", "--hf", d, "--workdir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "GPT2LMHeadModel" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
