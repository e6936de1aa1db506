"""The `sparrow` command's malloc settings: XLA:CPU's per-call buffers stop faulting in fresh pages."""
import subprocess
import sys
import textwrap

import pytest

from sparrow_jax import host_memory

# A jitted call whose operand of the dot, outer(a, b), is a 128 MB temporary (bigger than a
# glibc thread arena's heap): per call, "page faults resident-MiB", one line each.
_CALLS = textwrap.dedent("""
    import resource, sys
    from sparrow_jax import host_memory
    if sys.argv[1] == "on":
        host_memory.reuse_freed_memory({"JAX_PLATFORMS": "cpu"})
    import jax, jax.numpy as jnp
    f = jax.jit(lambda a, b, c: jnp.outer(a, b).T @ c)
    a, b, c = jnp.ones(4096), jnp.ones(8192), jnp.ones(4096)
    for _ in range(24):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(f(a, b, c))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        print(faults, int(open("/proc/self/statm").read().split()[1]) * 4096 // 2 ** 20)
""")


def _calls(mode: str) -> list[tuple[int, int]]:
    out = subprocess.run([sys.executable, "-c", _CALLS, mode], capture_output=True, text=True,
                         timeout=300, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return [tuple(int(x) for x in line.split()) for line in out.stdout.splitlines()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_settings_stop_page_faults_of_repeated_xla_cpu_calls():
    default, reused = _calls("off"), _calls("on")
    # 128 MB is 32768 pages: glibc's default maps them afresh at every call ...
    assert min(faults for faults, _ in default[-4:]) > 16000, default
    # ... and with the settings a call either reuses a freed block (no faults) or grows the
    # heap by one block: idle, up to 8 of the first 10 calls did, then none; under CI's load
    # also scattered later calls.
    grew = [faults > 16000 for faults, _ in reused]
    assert sum(grew) <= 12, reused
    assert reused[-1][1] - reused[0][1] <= 12 * 128, reused  # resident MiB: bounded growth


def test_only_for_xla_cpu_and_with_an_opt_out():
    assert host_memory.runs_xla_cpu({"JAX_PLATFORMS": "cpu"})
    assert not host_memory.runs_xla_cpu({"JAX_PLATFORMS": "tpu,cpu"})
    assert "SPARROW_MALLOC=system" in host_memory.reuse_freed_memory({"SPARROW_MALLOC": "system"})
    assert "not XLA:CPU" in host_memory.reuse_freed_memory({"JAX_PLATFORMS": "cuda"})
    assert "not XLA:CPU" in host_memory.applied()  # what `sparrow train` logs
