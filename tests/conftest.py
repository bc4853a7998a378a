"""Test set-up: 8 virtual CPU devices (so sharding is exercised) and a float64 switch."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from diffusion import xla_flags  # noqa: E402

xla_flags.use_xla_cpu_convolutions()   # as the entry points do, so tests compile what they run

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(workdir, final state) of ``tiny_configs.shrink(configs/base.py)`` trained to step 4 (logged every
    step, checkpoints at 2 and 4, a sample grid at 4): trained once for every test that reads such a
    run; tests read it and never write in it."""
    from configs import base
    from experiments import loop
    from tiny_configs import shrink
    workdir = tmp_path_factory.mktemp("tiny_run")
    return workdir, loop.train_and_evaluate(shrink(base.get_config()), workdir)


@pytest.fixture(scope="session")
def tiny_clip_run(tmp_path_factory):
    """A CLIP run of ``tiny_configs.tiny_clip_config(False)`` (2 steps), shared by the text-to-image
    and unCLIP tests; read, never written in."""
    from experiments.text import clip_training
    from tiny_configs import tiny_clip_config
    workdir = tmp_path_factory.mktemp("tiny_clip_run")
    clip_training.train_clip(tiny_clip_config(False), workdir)
    return workdir


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory):
    """A text-to-image run of ``tiny_configs.tiny_text_config()`` (4 steps), shared by the
    text-to-image and CLIP-guidance tests; read (evaluating it writes its eval/ folder), never trained further."""
    from experiments import loop
    from tiny_configs import tiny_text_config
    workdir = tmp_path_factory.mktemp("tiny_text_run")
    loop.train_and_evaluate(tiny_text_config(), workdir)
    return workdir


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats (closed-form comparisons)."""
    with jax.enable_x64(True):
        yield

# Identical programs (the same tiny model across tests) compile once per session.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
