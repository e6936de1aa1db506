"""A data dir without a tokenizer takes the one its train.init_from checkpoint stored."""
import base64
import json

import pytest

from sparrow_jax.config import ConfigError, default_config
from sparrow_jax.train import stage_data


def write_assets(workdir, step, tokenizer):
    assets = workdir / "checkpoints" / str(step) / "assets"
    assets.mkdir(parents=True)
    encoded = base64.b64encode(tokenizer.serialized_model).decode() if tokenizer else ""
    (assets / "metadata").write_text(json.dumps({"tokenizer.model": encoded} if tokenizer else {}))


def config(data_dir, init_from=""):
    cfg = default_config()
    cfg.data.dir = str(data_dir)
    cfg.train.init_from = str(init_from)
    return cfg


def test_the_init_checkpoints_tokenizer_is_used_and_nothing_is_written(tokenizer, tmp_path):
    data, sft = tmp_path / "data", tmp_path / "sft"
    data.mkdir()
    write_assets(sft, 100, tokenizer)
    write_assets(sft, 200, None)  # the newest step stored no tokenizer: the one before is read
    loaded = stage_data.load_tokenizer(config(data, sft))
    assert loaded.serialized_model == tokenizer.serialized_model
    assert list(data.iterdir()) == []  # the data dir is left as it was


def test_the_data_dirs_own_tokenizer_comes_first(tokenizer, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "tokenizer.model").write_bytes(tokenizer.serialized_model)
    assert stage_data.load_tokenizer(config(data, tmp_path / "missing")).vocab_size == tokenizer.vocab_size


def test_no_tokenizer_anywhere_is_an_error_naming_the_places(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ConfigError, match=r"no tokenizer at .*tokenizer.model, none in a "
                                          r"train.init_from checkpoint \(.*sft\)"):
        stage_data.load_tokenizer(config(data, tmp_path / "sft"))
