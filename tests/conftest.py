"""Test set-up: 8 simulated CPU devices and fast compiles (`xla_flags.py`), set before JAX
initialises."""
import os

from xla_flags import FAST_COMPILE

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" {FAST_COMPILE}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow")


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin has set up the base temp dir
def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test, run with --runslow")
    config.addinivalue_line(
        "markers", "long_running(seconds): a module that takes about this long on the 2-core CI "
        "host; such modules are started first (`_longest_modules_first`)")
    _share_compilation_cache(config)


def _share_compilation_cache(config):
    """One JAX compilation cache per test run, in the run's pytest base temp directory.

    Many tests compile the same steps in different processes: both xdist workers, and the
    `sparrow train` subprocesses of the kill/resume and aot tests (which inherit this
    environment). Without a shared cache each process compiles them again. Set before
    any test module imports JAX; a directory the user set is kept. A fresh directory per
    run, so no entry outlives the code that compiled it.
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    base = config._tmp_path_factory.getbasetemp()
    run_dir = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(run_dir / "jax_compilation_cache")


def pytest_collection_modifyitems(config, items):
    _longest_modules_first(items)
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def _longest_modules_first(items):
    """Reorder `items` so that modules marked `long_running` come first, longest first; the rest
    keep their order. xdist (`--dist loadfile`, pytest.ini) hands modules to its workers in this
    order: a 7-minute module started last would keep one worker busy while the other idles."""
    seconds = {}
    for item in items:
        marker = item.get_closest_marker("long_running")
        if marker is not None:
            seconds[item.path] = max(seconds.get(item.path, 0), float(marker.args[0]))
    items.sort(key=lambda item: -seconds.get(item.path, 0))  # stable: the rest keep their order
