"""What XLA compiles while a block runs (tests that a warmed-up loop compiles nothing)."""
import contextlib

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compiled_programs(label=None):
    """Yields a list that gets one entry per program XLA compiles inside the block: the
    program's name, or `label()` at that moment when given (e.g. the steps done so far)."""
    entries = []

    def on_event(event, duration, fun_name="", **kwargs):
        if event == _COMPILE_EVENT:
            entries.append(fun_name if label is None else label())
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        yield entries
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
