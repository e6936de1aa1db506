"""An imported checkpoint's SentencePiece model as the dialogue tokenizer (issue 18): Sparrow's
control ids it lacks are appended, the model's vocabulary grows to hold them with new embedding
and LM-head rows at the mean, the original logits are unchanged, and the render property test
(text can never produce a role id) holds on it. Another tokenizer format is a clear error."""
import io
import json
import os
import random
import shutil

import numpy as np
import pytest
import sentencepiece as spm

from sparrow_jax.hf.families import HFImportError
from sparrow_jax.hf.importer import run_import
from sparrow_jax.train.stage_data import checkpoint_tokenizer
from test_dialogue_render import test_render_is_unforgeable_and_invertible as _render_property

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
SP_PIECES = 300   # + 7 appended control ids = 307 > the fixture's 128 rows: 179 rows added
ROWS = 128


def _sentencepiece_model() -> bytes:
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 7)))
             for _ in range(300)]
    lines = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(400)]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buffer,
                                   vocab_size=SP_PIECES, minloglevel=2, num_threads=1,
                                   # as Gemma's model: bytes for unknown text, no
                                   # normalisation, whitespace kept, no dummy prefix (with one,
                                   # as Llama 2's, a literal U+2581 decodes as a space:
                                   # Tokenizer._space_mark_escape)
                                   byte_fallback=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, add_dummy_prefix=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported_tokenizer")
    hf = str(root / "llama")
    shutil.copytree(os.path.join(FIXTURES, "llama"), hf)
    with open(os.path.join(hf, "tokenizer.model"), "wb") as f:
        f.write(_sentencepiece_model())
    report = run_import(hf, str(root / "lm"), n_frozen_layers=1,
                        overrides=["--config.model.compute_dtype=float32"])
    return hf, str(root / "lm"), report


def test_vocabulary_grows_with_mean_rows_and_keeps_the_logits(imported):
    import jax.numpy as jnp
    from sparrow_jax import sharding as shd
    from sparrow_jax.config import load_experiment
    from sparrow_jax.model import hydra
    from sparrow_jax.train import init_from
    hf, out, report = imported
    added = SP_PIECES + 7 - ROWS
    assert report["vocab_rows_added"] == added
    cfg = load_experiment(os.path.join(out, "experiment.py") + ":sft")
    assert cfg.model.vocab_size == SP_PIECES + 7
    params = init_from.load_source(out, cfg, shd.make_mesh(cfg.mesh)).params
    embedding = np.asarray(params["trunk"]["embedding"])
    unembed = np.asarray(params["policy"]["unembed"])
    mean_row, mean_column = embedding[:ROWS].mean(0), unembed[:, :ROWS].mean(1)
    np.testing.assert_allclose(embedding[ROWS:], np.repeat(mean_row[None], added, 0),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(unembed[:, ROWS:], np.repeat(mean_column[:, None], added, 1),
                               rtol=1e-5, atol=1e-7)
    ref = {n: np.load(os.path.join(FIXTURES, "llama", "reference", f"{n}.npy"))
           for n in ("tokens", "valid", "logits")}
    logits = hydra.forward(params, cfg.model, jnp.asarray(ref["tokens"]),
                           valid_BxL=jnp.asarray(ref["valid"]), roles=("policy",))["policy"]
    np.testing.assert_allclose(np.asarray(logits)[ref["valid"]][:, :ROWS],
                               ref["logits"][ref["valid"]], atol=1e-4, rtol=0)
    # The run's tokenizer: stored with the checkpoint (used when the data dir has none).
    with open(os.path.join(hf, "tokenizer.model"), "rb") as f:
        assert checkpoint_tokenizer(out)[1] == f.read()


def test_text_cannot_produce_a_role_id_with_the_imported_tokenizer(imported):
    from sparrow_jax.dialogue.tokenizer import Tokenizer
    tokenizer = Tokenizer(checkpoint_tokenizer(imported[1])[1])
    assert tokenizer.vocab_size == SP_PIECES + 7
    assert min(tokenizer.control_ids - {1, 2}) >= SP_PIECES   # all but bos/eos appended
    _render_property(tokenizer=tokenizer)


def test_another_tokenizer_format_is_a_clear_error(tmp_path):
    hf = str(tmp_path / "llama")
    shutil.copytree(os.path.join(FIXTURES, "llama"), hf)
    with open(os.path.join(hf, "tokenizer.json"), "w") as f:
        json.dump({"model": {"type": "BPE"}}, f)
    with pytest.raises(HFImportError, match="only SentencePiece tokenizers are supported"):
        run_import(hf, str(tmp_path / "lm"))
