"""The recipe from an imported open-weight model (issue 18; slow: eight `sparrow` subprocesses):
the tiny Llama fixture with a SentencePiece tokenizer -> `sparrow import` -> sft, pref_rm,
rule_rm and rl at smoke size on the toy world, tokenised with the imported tokenizer (the data
dir has none: the runs take the checkpoint's) -> `sparrow eval` -> `sparrow export`."""
import io
import json
import os
import shutil

import pytest
import sentencepiece as spm

from loop_helpers import REPO, make_world, sparrow

FIXTURE = os.path.join(REPO, "tests", "fixtures", "hf", "llama")


def run(*args):
    proc = sparrow(*args)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
def test_import_then_every_stage_then_eval_and_export(tmp_path):
    world = make_world(str(tmp_path / "world"))
    assert not os.path.exists(os.path.join(world, "tokenizer.model"))
    hf = str(tmp_path / "hf")
    shutil.copytree(FIXTURE, hf, ignore=shutil.ignore_patterns("reference"))
    with open(os.path.join(world, "lm.txt")) as f:
        lines = [line for line in f.read().splitlines() if line.strip()][:3000]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buffer,
                                   vocab_size=400, minloglevel=2, num_threads=1,
                                   byte_fallback=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, add_dummy_prefix=False)
    with open(os.path.join(hf, "tokenizer.model"), "wb") as f:
        f.write(buffer.getvalue())
    w = lambda name: str(tmp_path / name)
    # Rotary positions have no table: the fixture's 64 positions can be raised for the RL context.
    run("import", "--hf", hf, "--workdir", w("lm"), "--n-frozen-layers", "1",
        "--config.model.max_len=512")
    with open(os.path.join(w("lm"), "import.json")) as f:
        assert json.load(f)["vocab_rows_added"] == 400 + 7 - 128
    exp = os.path.join(w("lm"), "experiment.py")
    common = [f"--config.data.dir={world}", "--config.train.steps=2", "--config.train.batch_size=4",
              "--config.train.eval_batches=1", "--config.train.eval_every=0",
              "--config.data.rule_len=128"]
    out = run("train", "--config", f"{exp}:sft", "--workdir", w("sft"), *common,
              f"--config.train.init_from={w('lm')}")
    assert "tokenizer from train.init_from's checkpoint" in out
    for stage in ("pref_rm", "rule_rm"):
        run("train", "--config", f"{exp}:{stage}", "--workdir", w(stage), *common,
            f"--config.train.init_from={w('sft')}")
    run("train", "--config", f"{exp}:rl", "--workdir", w("rl"), *common,
        f"--config.train.init_from={w('sft')}", f"--config.rl.pref_rm_from={w('pref_rm')}",
        f"--config.rl.rule_rm_from={w('rule_rm')}", "--config.rl.normaliser_batches=1",
        "--config.rl.max_new_tokens=8")
    run("eval", "--workdir", w("rl"), "--max-prompts", "8")
    reports = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(w("rl"), "eval"))
               for f in fs if f == "report.json"]
    assert len(reports) == 1
    run("export", "--workdir", w("rl"), "--out", w("export"))
    with open(os.path.join(w("export"), "config.json")) as f:
        assert json.load(f)["vocab_size"] == 407
    assert os.path.exists(os.path.join(w("export"), "tokenizer.model"))
