"""What every training loop (supervised stages and RL) shares about stopping and finishing.

  PREEMPTED_EXIT_CODE / Preempted   SIGTERM arrived and a checkpoint was saved
  TrainingError                     training cannot go on; checkpoints are intact
  NonfiniteGuard                    counts skipped non-finite steps, stops after N in a row
  write_summary                     workdir/summary.json, written by process 0
  STOPPING_ERRORS / exit_code       how a command reports a run that stopped
"""
from __future__ import annotations

import json
import logging
import sys

import jax
import jax.numpy as jnp

from sparrow_jax.distributed import to_host
from sparrow_jax.train import storage
from sparrow_jax.train.checkpoints import CheckpointError

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 143  # what the launcher's babysit mode treats as "rerun me"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses); checkpoints are intact."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved at `step`."""

    def __init__(self, step: int):
        super().__init__(f"preempted: saved a checkpoint at step {step}")
        self.step = step


@jax.jit
def _count_nonfinite(counters: dict, nonfinite) -> dict:
    skipped = nonfinite > 0
    in_row = jnp.where(skipped, counters["in_row"] + 1, 0)
    return {"in_row": in_row, "worst": jnp.maximum(counters["worst"], in_row),
            "total": counters["total"] + skipped.astype(jnp.int32)}


class NonfiniteGuard:
    """Counts skipped non-finite steps on device; stops after `max_in_row` in a row.

    `observe(metrics)` pops the step's `nonfinite` metric (1 = the update was skipped, see
    train/step.py) and updates device counters without waiting for the step. `check(step)`
    reads them (a host sync: the loops call it at log intervals and before a save) and
    raises TrainingError, naming the checkpoint dir, if a run of `max_in_row` skipped steps
    happened since the last check; skipped steps changed nothing, so a late stop loses no
    training. `total` is checkpointed (pass it back as `total` on resume).
    """

    def __init__(self, max_in_row: int, checkpoint_dir: str, total: int = 0):
        self.max_in_row, self.checkpoint_dir = max_in_row, checkpoint_dir
        self._counters = {"in_row": jnp.int32(0), "worst": jnp.int32(0), "total": jnp.int32(total)}
        self._reported_total = total

    @property
    def check_every(self) -> int:
        """How often a loop must call `check` so a stop comes at most this many steps late."""
        return max(1, self.max_in_row)

    @property
    def total(self) -> int:
        return int(to_host(self._counters["total"]))

    @total.setter
    def total(self, value: int) -> None:  # from a checkpoint's meta on resume
        self._counters = {**self._counters, "total": jnp.int32(value)}
        self._reported_total = int(value)

    def observe(self, metrics: dict) -> None:
        self._counters = _count_nonfinite(self._counters, metrics.pop("nonfinite"))

    def check(self, step: int) -> dict[str, float]:
        """Raise if a long enough run of skipped steps happened; metrics {nonfinite_total}."""
        counters = {k: int(v) for k, v in to_host(self._counters).items()}
        if counters["total"] > self._reported_total:
            log.warning("%d non-finite step(s) by step %d: those updates were skipped",
                        counters["total"] - self._reported_total, step)
            self._reported_total = counters["total"]
        if counters["worst"] >= self.max_in_row:
            raise TrainingError(
                f"{counters['worst']} non-finite steps in a row (train.max_nonfinite_in_row="
                f"{self.max_in_row}) by step {step}; the last checkpoint in "
                f"{self.checkpoint_dir} is intact. Lower train.learning_rate or check the data.")
        self._counters = {**self._counters, "worst": self._counters["in_row"]}
        return {"nonfinite_total": float(counters["total"])}


def write_summary(workdir: str, summary: dict) -> None:
    if jax.process_index() == 0:
        storage.write_text(storage.join(workdir, "summary.json"), json.dumps(summary, indent=2))


# What a training command catches; ValueError covers bad data (schema errors name the file,
# line and field), ConfigError and shape mismatches.
STOPPING_ERRORS = (Preempted, TrainingError, CheckpointError, ValueError)


def exit_code(command: str, err: BaseException) -> int:
    """Print `err` for the user and return the command's exit code: 143 preempted (rerun to
    resume), 1 training failed, 2 bad config, data or checkpoint."""
    hint = "; rerun the same command to resume" if isinstance(err, Preempted) else ""
    kind = "checkpoint error: " if isinstance(err, CheckpointError) else ""
    print(f"{command}: {kind}{err}{hint}", file=sys.stderr)
    if isinstance(err, Preempted):
        return PREEMPTED_EXIT_CODE
    return 1 if isinstance(err, TrainingError) else 2
