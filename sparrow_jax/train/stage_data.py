"""What a training stage reads: the tokenizer, the rules, and its batch iterators.

Layout of `cfg.data.dir` (what `sparrow data toyworld` writes): JSONL files,
`tfds/` with the built datasets, `lm.txt` for the lm stage, and (made here on
first use) `tokenizer.model` trained from `lm.txt`. A data dir without a
tokenizer (`sparrow data prepare` writes none) uses the one stored in the
`train.init_from` checkpoint, which is the one its model was trained with.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from sparrow_jax.config import ConfigError

log = logging.getLogger(__name__)

# stage -> (train record kind, eval stage, eval record kind). lm is judged like
# sft (held-out NLL on agent turns) so the two compare directly.
STAGE_DATA = {
    "lm": ("lm_text", "sft", "dialogues"),
    "sft": ("dialogues", "sft", "dialogues"),
    "pref_rm": ("preferences", "pref_rm", "preferences"),
    "rule_rm": ("rule_ratings", "rule_rm", "rule_ratings"),
}


def data_dir(cfg) -> str:
    if not cfg.data.dir:
        raise ConfigError("data.dir is empty: set --config.data.dir to a directory made by "
                          "`sparrow data toyworld --out DIR` (or of the same layout)")
    if not os.path.isdir(cfg.data.dir):
        raise ConfigError(f"data.dir={cfg.data.dir!r} does not exist; make it with "
                          "`sparrow data toyworld --out DIR`")
    return cfg.data.dir


def tfds_dir(cfg) -> str:
    return cfg.data.tfds_dir or os.path.join(data_dir(cfg), "tfds")


def tokenizer_path(cfg) -> str:
    return cfg.data.tokenizer or os.path.join(data_dir(cfg), "tokenizer.model")


def checkpoint_tokenizer(workdir: str) -> tuple[str, bytes] | None:
    """(where, model bytes) of the tokenizer stored with the newest checkpoint of `workdir` that
    has one (the `assets` item, JSON of base64 files); None if there is none. Reads files only."""
    import base64

    from sparrow_jax.train import storage
    root = storage.run_path(workdir) / "checkpoints"
    try:
        steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True)
    except OSError:
        return None
    for step in steps:
        path = root / str(step) / "assets" / "metadata"
        try:
            encoded = json.loads(path.read_text()).get("tokenizer.model")
        except (OSError, ValueError):
            continue
        if encoded:
            return os.fspath(path), base64.b64decode(encoded)
    return None


def load_tokenizer(cfg):
    """The run's tokenizer: `data.tokenizer`, else <data.dir>/tokenizer.model, else the one the
    `train.init_from` checkpoint stored, else trained from <data.dir>/lm.txt (first use).

    Raises ConfigError if the tokenizer has more ids than the model's vocabulary.
    """
    from sparrow_jax.dialogue.tokenizer import Tokenizer, train_tokenizer
    path = tokenizer_path(cfg)
    stored = None
    if not os.path.exists(path) and not cfg.data.tokenizer and cfg.train.init_from:
        stored = checkpoint_tokenizer(cfg.train.init_from)
    if os.path.exists(path):
        tokenizer = Tokenizer.load(path)
    elif stored is not None:
        path, model = stored
        log.info("tokenizer from train.init_from's checkpoint: %s", path)
        tokenizer = Tokenizer(model)
    else:
        text_path = os.path.join(data_dir(cfg), "lm.txt")
        if not os.path.exists(text_path):
            raise ConfigError(f"no tokenizer at {path}, none in a train.init_from checkpoint "
                              f"({cfg.train.init_from or 'not set'}) and no {text_path} to train "
                              f"one from")
        from sparrow_jax.data.pipelines import read_text_documents
        log.info("training a %d-piece tokenizer from %s", cfg.model.vocab_size, text_path)
        # Written to a temporary name and renamed, so a concurrent reader never
        # sees half a file.
        tmp = f"{path}.tmp{os.getpid()}"
        train_tokenizer(read_text_documents(text_path), tmp, vocab_size=cfg.model.vocab_size)
        os.replace(tmp, path)
        tokenizer = Tokenizer.load(path)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"the tokenizer at {path} has {tokenizer.vocab_size} ids but "
                          f"model.vocab_size={cfg.model.vocab_size}")
    return tokenizer


RULE_SCOPES = ("rated", "all")


def rules_by_id(cfg, scope: str = "all") -> dict[str, str]:
    """{rule id: rule text} in the rules file's order (the rule index order); `scope` as in
    `select_rules`, with cfg.data.dir as the data directory."""
    from sparrow_jax.dialogue.rules import load_rules
    rules = select_rules(load_rules(cfg.data.rules or None), cfg.data.dir, scope)
    return {rule.id: rule.text for rule in rules}


def rated_rule_ids(directory: str) -> set[str] | None:
    """Rule ids with a rating in `<directory>/rule_ratings.train.jsonl` (what the rule RM
    learnt), or None if there is no such file."""
    path = os.path.join(directory or "", "rule_ratings.train.jsonl")
    if not os.path.exists(path):
        return None
    from sparrow_jax.data.jsonl import json_lines
    return {obj.get("rule_id") for _, obj in json_lines(path, "rule ratings JSONL")}


def select_rules(rules, directory: str, scope: str) -> tuple:
    """`scope` "all": every rule; "rated": those the rule RM saw ratings of in `directory`
    (every rule if that is not known). Order kept."""
    if scope not in RULE_SCOPES:
        raise ValueError(f"rule scope must be one of {RULE_SCOPES}, got {scope!r}")
    rated = rated_rule_ids(directory) if scope == "rated" else None
    chosen = tuple(r for r in rules if rated is None or r.id in rated)
    return chosen or tuple(rules)


def _source(cfg, kind: str, split: str):
    if kind == "lm_text":
        # The stand-in for pre-training: plain text only (documents of train
        # entities, since held-out entities must be found by searching, and
        # dialogues as "User: ..." transcripts). Like a real base LM it never sees
        # the role tokens; SFT teaches the dialogue format.
        from sparrow_jax.data.pipelines import read_text_documents
        return read_text_documents(os.path.join(data_dir(cfg), "lm.txt"))
    from sparrow_jax.data import tfds_builders
    directory = tfds_dir(cfg)
    try:
        return tfds_builders.load_source(directory, kind, split)
    except Exception as err:  # tfds raises several kinds for a missing dataset
        raise ConfigError(f"cannot read the {kind!r} {split} split from {directory} ({err}); "
                          f"build it with `sparrow data build --jsonl-dir {data_dir(cfg)}`") from err


def stage_batch_size(cfg, stage: str) -> int:
    """Rows per global batch as the pipeline counts them (pref_rm: comparisons)."""
    if stage == "pref_rm":
        from sparrow_jax.train.stages import comparisons_per_batch
        return comparisons_per_batch(cfg.train.batch_size, cfg.data.num_candidates)
    return cfg.train.batch_size


def _pipeline(cfg, stage: str, kind: str, split: str, tokenizer, train: bool,
              rows: slice | None = None):
    from sparrow_jax.data.pipelines import make_pipeline
    return make_pipeline(
        stage, _source(cfg, kind, split), tokenizer,
        global_batch_size=stage_batch_size(cfg, stage), seq_len=cfg.train.seq_len,
        seed=cfg.train.seed, shuffle=train, num_epochs=None if train else 1,
        drop_remainder=train, num_candidates=cfg.data.num_candidates, rows=rows,
        rule_len=cfg.data.rule_len, rules=rules_by_id(cfg),
        pack=bool(cfg.data.pack_sft) and stage == "sft" and train)


def train_iterator(cfg, stage: str, tokenizer, rows: slice | None = None):
    """Endless, shuffled, checkpointable batches of the stage's train split: `rows` of
    each global batch (this process's; None = all)."""
    kind = STAGE_DATA[stage][0]
    pipeline_stage = "lm" if stage == "lm" else stage
    return _pipeline(cfg, pipeline_stage, kind, "train", tokenizer, train=True, rows=rows)


def eval_batches(cfg, stage: str, tokenizer, max_batches: int = 0):
    """One pass over the stage's test split: yields (global batch, number of real rows),
    the same on every process.

    The last batch is padded to the full batch size by repeating its first row,
    so the eval function compiles once; callers use only the first `n` rows.
    """
    _, eval_stage, kind = STAGE_DATA[stage]
    iterator = _pipeline(cfg, eval_stage, kind, "test", tokenizer, train=False)
    full = stage_batch_size(cfg, eval_stage)
    for count, batch in enumerate(iterator):
        if max_batches and count >= max_batches:
            return
        rows = len(next(iter(batch.values())))
        if rows < full:
            batch = {k: np.concatenate([v, np.repeat(v[:1], full - rows, axis=0)])
                     for k, v in batch.items()}
        yield batch, rows
