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


class NonfiniteGuard:
    """Reads the step's `nonfinite` metric (1 = the update was skipped, see train/step.py).

    `total` is checkpointed (pass it back as `total` on resume); after `max_in_row`
    skipped steps in a row `check` raises TrainingError naming the checkpoint dir.
    """

    def __init__(self, max_in_row: int, checkpoint_dir: str, total: int = 0):
        self.max_in_row, self.checkpoint_dir = max_in_row, checkpoint_dir
        self.total, self.in_row = total, 0

    def check(self, step: int, metrics: dict) -> None:
        """Pops `nonfinite` from host `metrics`, adds `nonfinite_total`; may raise."""
        nonfinite = bool(metrics.pop("nonfinite"))
        self.in_row = self.in_row + 1 if nonfinite else 0
        self.total += int(nonfinite)
        metrics["nonfinite_total"] = float(self.total)
        if nonfinite:
            log.warning("step %d: non-finite loss or gradient norm; update skipped (%d in a row)",
                        step, self.in_row)
        if self.in_row >= self.max_in_row:
            raise TrainingError(
                f"{self.in_row} non-finite steps in a row (train.max_nonfinite_in_row="
                f"{self.max_in_row}) at step {step}; the last checkpoint in "
                f"{self.checkpoint_dir} is intact. Lower train.learning_rate or check the data.")


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
