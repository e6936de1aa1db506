"""`sparrow export` inverts `sparrow import`: import a fixture, export its policy, and get the
fixture's tensors back bit for bit, with a config.json that imports to the same model keys.
(tests/fixtures/hf/test_export_transformers.py loads the export with `transformers`.)"""
import json
import os

import numpy as np
import pytest

from sparrow_jax.hf.exporter import family_of_model, run_export
from sparrow_jax.hf.families import HFImportError, model_overrides
from sparrow_jax.hf.importer import run_import

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_import_export_round_trip(family, tmp_path):
    from safetensors.numpy import load_file
    src = os.path.join(FIXTURES, family)
    run_import(src, str(tmp_path / "lm"), n_frozen_layers=1)
    report = run_export(str(tmp_path / "lm"), str(tmp_path / "hf"))
    original = load_file(os.path.join(src, "model.safetensors"))
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert sorted(exported) == sorted(original) and report["tensors"] == len(original)
    for name, array in original.items():
        np.testing.assert_array_equal(exported[name], array, err_msg=name)
    with open(os.path.join(src, "config.json")) as f:
        want = model_overrides(json.load(f))
    with open(tmp_path / "hf" / "config.json") as f:
        assert model_overrides(json.load(f)) == want


def test_export_refuses_a_model_without_an_hf_form(tmp_path):
    from tiny_models import tiny_model_config
    with pytest.raises(HFImportError, match="no HF architecture"):
        family_of_model(tiny_model_config().to_dict())   # Transformer-XL relative, GELU
    with pytest.raises(HFImportError, match="no checkpoint"):
        run_export(str(tmp_path / "nothing"), str(tmp_path / "out"))
