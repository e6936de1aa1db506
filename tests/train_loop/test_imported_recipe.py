"""The recipe from an imported open-weight model (issue 18), in default CI: the tiny Llama fixture
with a SentencePiece tokenizer trained on the toy world's text -> `sparrow import` -> sft,
pref_rm, rule_rm and rl at smoke size on the toy world, tokenised with the imported tokenizer
(the data dir has none: each run takes its `train.init_from` checkpoint's) -> `sparrow eval`
-> `sparrow export`.

Every command goes through the real entry point (`sparrow_jax.cli.main`, argv as a user types
it), all of them in ONE subprocess (this file run as a script), so JAX, TensorFlow and the
model code are imported once, not eight times. That process has one CPU device and XLA's
backend optimisation level 0 (`--xla_backend_optimization_level=0`, LLVM without its
optimisation passes): this chain is all compilation (about 90 programs, each run once or
twice on a 54k-parameter model), and level 0 compiles them several times faster (the hydra's
init 7.6 s -> 0.9 s, the sft step 10.6 s -> 1.7 s on the 2-core CI host). The numbers it
checks are plumbing, not figures: every stage writes a checkpoint, the evaluation report has
its figures, the imported tokenizer is what every stage tokenised with, and text cannot forge a
role with it.
"""
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.long_running(60)

FIXTURE_PARTS = ("tests", "fixtures", "hf", "llama")
SP_PIECES = 400   # + 7 Sparrow control ids the model lacks = 407 rows (the fixture has 128)
STEPS = 1
STAGES = ("sft", "pref_rm", "rule_rm", "rl")
# Model keys that change no parameter shape (the later stages inherit them from the import's
# config): one attention block over every key instead of 64-query blocks, and the layers as
# a Python loop instead of a scan. Each cuts the programs' compile time (the sft step
# 3.0 -> 2.2 s CPU, the rule_rm step 4.2 -> 2.2 s); the scanned, blocked path is what every
# other training test runs.
CHEAP_TO_COMPILE = ("--config.model.causal_block=0", "--config.model.scan_layers=False")


def _commands(tmp: str, world: str, hf: str) -> list[list[str]]:
    """The user's commands, in order: import, four stages, eval, export."""
    w = lambda name: os.path.join(tmp, name)
    exp = os.path.join(w("lm"), "experiment.py")
    # Smoke size: 1 step of 4 rows; one eval batch at the end. Rule questions in the
    # 400-piece vocabulary need 128 tokens. Rotary positions have no table: the fixture's 64
    # positions are raised to hold the RL context (64-token prompts + 8-token turns -> L = 80).
    common = [f"--config.data.dir={world}", f"--config.train.steps={STEPS}",
              "--config.train.batch_size=4", "--config.train.eval_batches=1",
              "--config.train.eval_every=0", "--config.data.rule_len=128"]
    return [
        ["import", "--hf", hf, "--workdir", w("lm"), "--n-frozen-layers", "1",
         "--config.model.max_len=512", *CHEAP_TO_COMPILE],
        ["train", "--config", f"{exp}:sft", "--workdir", w("sft"), *common,
         f"--config.train.init_from={w('lm')}"],
        *[["train", "--config", f"{exp}:{stage}", "--workdir", w(stage), *common,
           f"--config.train.init_from={w('sft')}"] for stage in ("pref_rm", "rule_rm")],
        ["train", "--config", f"{exp}:rl", "--workdir", w("rl"), *common,
         f"--config.train.init_from={w('sft')}", f"--config.rl.pref_rm_from={w('pref_rm')}",
         f"--config.rl.rule_rm_from={w('rule_rm')}", "--config.rl.normaliser_batches=1",
         "--config.rl.max_prompt_len=64", "--config.rl.max_new_tokens=8",
         "--config.rl.rule_chunk=1"],   # one rule per scorer step: one program, not a search
        ["eval", "--workdir", w("rl"), "--max-prompts", "4", "--batch-size", "4"],
        ["export", "--workdir", w("rl"), "--out", w("export")],
    ]


def _run_chain(commands_json: str) -> int:
    """Child process: each command through `sparrow_jax.cli.main`; stop at the first failure."""
    import logging
    logging.basicConfig(level=logging.INFO,
                        format="%(relativeCreated)7.0f %(levelname)s %(name)s: %(message)s")
    from sparrow_jax.cli import main
    with open(commands_json) as f:
        commands = json.load(f)
    for argv in commands:
        start = time.perf_counter()
        print(f"$ sparrow {' '.join(argv)}", flush=True)
        try:
            main(argv)
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
        print(f"CHAIN {argv[0]} {os.path.basename(argv[4]) if argv[0] == 'train' else ''} "
              f"exit {code} {time.perf_counter() - start:.1f} s", flush=True)
        if code:
            return code
    return 0


def test_import_then_every_stage_then_eval_and_export(tmp_path):
    import sentencepiece as spm

    from loop_helpers import REPO, make_world
    from xla_flags import child_xla_flags
    from sparrow_jax.dialogue.tokenizer import Tokenizer
    from sparrow_jax.train.stage_data import checkpoint_tokenizer

    world = make_world(str(tmp_path / "world"))
    assert not os.path.exists(os.path.join(world, "tokenizer.model"))
    hf = str(tmp_path / "hf")
    shutil.copytree(os.path.join(REPO, *FIXTURE_PARTS), hf,
                    ignore=shutil.ignore_patterns("reference"))
    with open(os.path.join(world, "lm.txt")) as f:
        lines = [line for line in f.read().splitlines() if line.strip()][:3000]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buffer,
                                   vocab_size=SP_PIECES, minloglevel=2, num_threads=1,
                                   byte_fallback=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, add_dummy_prefix=False)
    sp_model = buffer.getvalue()
    with open(os.path.join(hf, "tokenizer.model"), "wb") as f:
        f.write(sp_model)

    commands = _commands(str(tmp_path), world, hf)
    commands_json = str(tmp_path / "commands.json")
    with open(commands_json, "w") as f:
        json.dump(commands, f)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=child_xla_flags())
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), commands_json], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    out = proc.stdout
    print("\n".join(line for line in out.splitlines() if line.startswith("CHAIN")))
    assert proc.returncode == 0, out[-4000:]
    assert out.count(" exit 0 ") == len(commands), out[-4000:]

    w = lambda name: str(tmp_path / name)
    with open(os.path.join(w("lm"), "import.json")) as f:
        assert json.load(f)["vocab_rows_added"] == SP_PIECES + 7 - 128
    # Each stage wrote its checkpoint, with the imported SentencePiece model as its tokenizer;
    # the data dir never got one of its own (none trained from lm.txt).
    for stage in STAGES:
        with open(os.path.join(w(stage), "summary.json")) as f:
            summary = json.load(f)
        assert summary["finished"] and summary["step"] == STEPS, (stage, summary)
        assert os.path.isdir(os.path.join(w(stage), "checkpoints", str(STEPS))), stage
        assert checkpoint_tokenizer(w(stage))[1] == sp_model, stage
    assert out.count("tokenizer from train.init_from's checkpoint") == len(STAGES), out[-4000:]
    assert not os.path.exists(os.path.join(world, "tokenizer.model"))
    for stage, figure in (("sft", "agent_nll"), ("pref_rm", "accuracy")):
        with open(os.path.join(w(stage), "summary.json")) as f:
            assert math.isfinite(json.load(f)["eval"][figure]), stage

    reports = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(w("rl"), "eval"))
               for f in fs if f == "report.json"]
    assert len(reports) == 1
    with open(reports[0]) as f:
        report = json.load(f)
    metrics = report["metrics"]
    for figure in ("rule_violation_rate", "search_rate_all", "malformed_rate"):
        assert 0.0 <= metrics[figure] <= 1.0, (figure, metrics)
    assert metrics["intervals"]["malformed_rate"]["n"] > 0

    with open(os.path.join(w("export"), "config.json")) as f:
        assert json.load(f)["vocab_size"] == SP_PIECES + 7
    with open(os.path.join(w("export"), "tokenizer.model"), "rb") as f:
        assert f.read() == sp_model

    # The tokenizer the runs used cannot produce a role id from user or search text.
    tokenizer = Tokenizer(checkpoint_tokenizer(w("rl"))[1])
    assert tokenizer.vocab_size == SP_PIECES + 7
    sys.path.insert(0, os.path.join(REPO, "tests", "dialogue"))
    from test_dialogue_render import test_render_is_unforgeable_and_invertible as render_property
    render_property(tokenizer=tokenizer)


if __name__ == "__main__":
    sys.exit(_run_chain(sys.argv[1]))
