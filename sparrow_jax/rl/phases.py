"""Where an RL step's time goes: wall seconds and counts per phase, off unless a clock is set.

    clock = PhaseClock(sync=True)
    with timing(clock):
        train_rl(cfg, workdir)          # code marks its phases with `phase("search")` etc.
    clock.seconds, clock.counts

Phases marked: "play" (self-play: sampling, search and host work), "sample" (sampler calls:
prefill and decode), "search" (the engine),
"rule_scoring" (the rule RM over every rule), "update" (the jitted A2C step, whose one trunk
pass also gives the preference RM's Elo), "step" (a whole RL step). Counts: "sampler_calls",
"sampler_calls_at_width_<w>" (those whose widest prompt width was w), "generated_tokens"
(sampled tokens the episodes keep, eot included), "steps" (and the totals after every step in
`clock.history`). With
`sync=True` a phase waits for its device results before its clock stops, so the split is
exact but host work no longer overlaps device work; without a clock nothing is timed or waited.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import time

import jax

_CLOCK: contextvars.ContextVar = contextvars.ContextVar("sparrow_phase_clock", default=None)


class PhaseClock:
    """Accumulated seconds and counts per phase name (see the module docstring)."""

    def __init__(self, sync: bool = False):
        self.sync = sync
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.counts: dict[str, int] = collections.defaultdict(int)
        self.history: list[tuple[dict[str, float], dict[str, int]]] = []  # after each step

    def snapshot(self) -> tuple[dict[str, float], dict[str, int]]:
        return dict(self.seconds), dict(self.counts)


@contextlib.contextmanager
def timing(clock: PhaseClock):
    """Make `clock` the one `phase` and `count` report to, in this context."""
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


@contextlib.contextmanager
def phase(name: str):
    """Time the block as phase `name` (nested phases count in both)."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        clock.seconds[name] += time.perf_counter() - start


def done(tree):
    """`tree`, after waiting for it when the clock syncs (call at the end of a phase)."""
    clock = _CLOCK.get()
    if clock is not None and clock.sync:
        jax.block_until_ready(tree)
    return tree


def count(name: str, n: int = 1) -> None:
    clock = _CLOCK.get()
    if clock is not None:
        clock.counts[name] += int(n)


def step_done() -> None:
    """Count a step and keep the totals so far in `clock.history`."""
    clock = _CLOCK.get()
    if clock is not None:
        clock.counts["steps"] += 1
        clock.history.append(clock.snapshot())
