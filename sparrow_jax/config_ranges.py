"""The allowed range of every numeric config key, checked by `config.validate`.

One table, `RANGES`: dotted key -> (lowest, highest, why), either bound None for open. Every
float in a config must also be finite (a NaN or infinite learning rate trains nothing and
says so only in the loss). Keys of the schema that are numbers and have no entry here must be
finite and are otherwise free (seeds, reward weights that may be negative on purpose).
"""
from __future__ import annotations

import math
from typing import Any

import ml_collections

INF = None

RANGES: dict[str, tuple[float | None, float | None, str]] = {
    # train
    "train.batch_size": (1, INF, "rows per step"),
    "train.seq_len": (4, INF, "a row must hold bos, a role token, text and an eot"),
    "train.steps": (1, INF, "a run trains at least one step"),
    "train.learning_rate": (0, INF, "the step size"),
    "train.warmup_steps": (0, INF, "steps of linear warm-up"),
    "train.weight_decay": (0, INF, "0 = off"),
    "train.grad_clip_norm": (0, INF, "0 = off"),
    "train.grad_accum_steps": (1, INF, "micro-batches per step"),
    "train.checkpoint_every": (1, INF, "steps between checkpoints"),
    "train.keep_checkpoints": (1, INF, "0 would delete the finished run's last checkpoint: the "
                                       "trained weights"),
    "train.eval_every": (0, INF, "0 = only at the end"),
    "train.eval_batches": (0, INF, "0 = the whole test split"),
    "train.log_every": (1, INF, "steps between logged metrics"),
    "train.max_nonfinite_in_row": (1, INF, "skipped steps in a row before stopping"),
    # data
    "data.num_candidates": (2, INF, "a comparison needs two candidates"),
    "data.rule_len": (1, INF, "tokens of the rule question suffix"),
    # loss
    "loss.pref_aux_weight": (0, INF, "a loss weight"),
    "loss.pref_centring": (0, INF, "a penalty weight"),
    # model (the shape keys are checked with their relations in config.validate)
    "model.norm_eps": (0, INF, "added to the variance"),
    "model.init_std": (0, INF, "of the initial weights"),
    "model.rotary_base": (0, INF, "of the rotary frequencies"),
    "model.value_hidden": (1, INF, "width of the value head"),
    "model.value_layers": (0, INF, "hidden layers of the value head"),
    # mesh and processes
    "mesh.aot_num_devices": (0, INF, "0 = the mesh's own size"),
    "distributed.num_processes": (1, INF, "processes in the run"),
    "distributed.process_id": (0, INF, "0-based"),
    # rl (the rest are in config._validate_rl)
    "rl.buffer_size": (0, INF, "dialogues kept to continue"),
    "rl.kl_coef": (0, INF, "a penalty weight"),
    "rl.value_coef": (0, INF, "a loss weight"),
    "rl.entropy_coef": (0, INF, "a bonus weight"),
    "rl.format_penalty": (0, INF, "subtracted from the reward of a malformed turn"),
}

# Lower bounds that are exclusive (the value must be strictly above).
EXCLUSIVE_LOW = {"train.learning_rate", "model.norm_eps", "model.init_std", "model.rotary_base"}


def _leaves(cfg: ml_collections.ConfigDict, prefix: str = ""):
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def check_ranges(cfg: ml_collections.ConfigDict, error: type[Exception]) -> None:
    """Raise `error` naming the key for a non-finite float or a value out of its RANGES."""
    values: dict[str, Any] = dict(_leaves(cfg))
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"config key '{key}' must be a finite number, got {value}")
    for key, (low, high, why) in RANGES.items():
        if key not in values or isinstance(values[key], bool):
            continue
        value = values[key]
        too_low = low is not None and (value <= low if key in EXCLUSIVE_LOW else value < low)
        if too_low or (high is not None and value > high):
            bound = (f"> {low}" if key in EXCLUSIVE_LOW else f">= {low}") if too_low else f"<= {high}"
            raise error(f"config key '{key}' must be {bound} ({why}), got {value}")
    if values.get("distributed.process_id", 0) >= values.get("distributed.num_processes", 1):
        raise error(f"config key 'distributed.process_id' must be < distributed.num_processes="
                    f"{values['distributed.num_processes']}, got {values['distributed.process_id']}")
