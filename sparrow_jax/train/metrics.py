"""Metrics to TensorBoard event files and JSON lines, and a console progress display.

Only process 0 writes or prints; every process computes. The log directory may be
local or a gs:// URL (`storage`). On a terminal the
progress display is a tqdm bar with rate and ETA; elsewhere (CI, log files) it
prints one line per `log_every` steps with the same figures.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Mapping


from sparrow_jax.train import storage


def _is_main_process() -> bool:
    import jax
    return jax.process_index() == 0


def to_floats(metrics: Mapping) -> dict[str, float]:
    """Device scalars (replicated, e.g. a jitted step's metrics) -> Python floats, each read
    from this process's own copy."""
    from sparrow_jax.distributed import to_host
    return {k: float(v) for k, v in to_host(dict(metrics)).items()}


class MetricsWriter:
    """Appends `{"step": N, "split": ..., name: value}` lines to metrics.jsonl and TB events."""

    def __init__(self, logdir: str, enabled: bool | None = None):
        self.enabled = _is_main_process() if enabled is None else enabled
        self.logdir = logdir
        self._tb = None
        self._jsonl = None
        if self.enabled:
            storage.makedirs(logdir)
            self._jsonl = storage.open_append(storage.join(logdir, "metrics.jsonl"))

    def write(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "split": split, **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is None:
            self._tb = _event_writer(self.logdir)
        for name, value in clean.items():
            if math.isfinite(value):
                self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


class _UrlEventFiles:
    """tensorboardX writer factory for gs:// log dirs, writing through `storage`.

    Replaces tensorboardX's own, which needs google-cloud-storage; the event file is
    rewritten whole when tensorboardX flushes it (every 120 s and on close).
    """

    def open(self, path: str):
        return storage.open_append(path, binary=True)

    def directory_check(self, path: str) -> None:
        storage.makedirs(path)


def _event_writer(logdir: str):
    from tensorboardX import SummaryWriter, record_writer
    if storage.is_url(logdir):
        scheme = logdir.split(":", 1)[0]
        record_writer.register_writer_factory(scheme, _UrlEventFiles())
    return SummaryWriter(logdir)


def read_metrics(logdir: str, split: str | None = None) -> list[dict]:
    """All records of metrics.jsonl (optionally one split), in write order."""
    path = storage.run_path(logdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if split is None or r.get("split") == split]


class Progress:
    """Step progress with rate and ETA; a bar on a terminal, periodic lines otherwise."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train",
                 log_every: int = 10, enabled: bool | None = None, stream=None):
        self.enabled = _is_main_process() if enabled is None else enabled
        self.total, self.step, self.desc = total, initial, desc
        self.log_every = max(1, log_every)
        self.stream = stream or sys.stderr
        self._start_time = time.perf_counter()
        self._start_step = initial
        self._bar = None
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream,
                             dynamic_ncols=True)

    def update(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
        if not self.enabled:
            return
        advanced, self.step = step - self.step, step
        if self._bar is not None:
            self._bar.update(advanced)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            return
        if step % self.log_every == 0 or step == self.total:
            self.stream.write(self.line(step, postfix) + "\n")
            self.stream.flush()

    def line(self, step: int, postfix: Mapping[str, float] | None = None) -> str:
        elapsed = time.perf_counter() - self._start_time
        done = step - self._start_step
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        figures = " ".join(f"{k}={v:.4g}" for k, v in (postfix or {}).items())
        eta_text = f"{eta:.0f}s" if math.isfinite(eta) else "?"
        return (f"[{self.desc}] step {step}/{self.total} {rate:.2f} steps/s "
                f"eta {eta_text} {figures}").rstrip()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
