"""Test set-up: 8 virtual CPU devices (so sharding is exercised) and a float64 switch."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from diffusion import xla_flags  # noqa: E402

xla_flags.use_xla_cpu_convolutions()   # as the entry points do, so tests compile what they run

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats (closed-form comparisons)."""
    with jax.enable_x64(True):
        yield

# Identical programs (the same tiny model across tests) compile once per session.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
