"""XLA_FLAGS of the test processes and of the `sparrow` processes tests start.

Tests compile far more than they compute (tiny models, a few steps each), so they run XLA:CPU's
LLVM backend at -O0 (FAST_COMPILE): the HLO optimisation passes still run, only the machine
code is less optimised. `tests/train_loop/test_rl_loop.py` took 156 s instead of 199 s and the
demo smoke test 126 s instead of 169 s (BUILD_NOTES, "Tests at LLVM -O0"). A test and the
processes whose results it compares with its own are compiled alike.
"""
FAST_COMPILE = "--xla_backend_optimization_level=0"


def child_xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a process a test starts: FAST_COMPILE, and `devices` simulated CPU
    devices when given (else the platform's one)."""
    if devices is None:
        return FAST_COMPILE
    return f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}"
