"""XLA settings measured to help on CPU, applied only when asked (and ``one_shot_jit``'s, for
programs that run once).

The entry points (``experiments.*``, ``benchmarks.run``) ask; in a notebook, opt in before the
first JAX computation with ``from diffusion import xla_flags; xla_flags.use_xla_cpu_convolutions()``.
``import diffusion`` leaves the environment alone.
"""
import functools
import os
import re

import jax

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def use_xla_cpu_convolutions() -> None:
    """Route CPU convolutions to XLA's own kernels instead of YNNPACK.

    XLA:CPU (jaxlib ≥ 0.10) hands convolutions to YNNPACK by default; on the U-Nets here its
    kernels for the small (7×7–14×14) feature maps are slower than XLA's own, so turning it off
    speeds up MNIST U-Net training and leaves the CIFAR-10 U-Net's about as it was (measured:
    benchmarks/RESULTS.md). It takes effect only before JAX starts its CPU backend; a
    user's own setting of the flag, or ``DIFFUSION_KEEP_XLA_FLAGS=1``, leaves XLA_FLAGS alone.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("DIFFUSION_KEEP_XLA_FLAGS") or YNN_FLAG.rstrip("=") in flags:
        return
    from jaxlib import version
    major, minor = re.match(r"(\d+)\.(\d+)", version.__version__).groups()   # "0.10.1", "0.11.0rc1", …
    if (int(major), int(minor)) >= (0, 10):
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()


# LLVM's optimisation level for XLA:CPU programs that run once or rarely (``one_shot_jit``); 3 is XLA's default.
ONE_SHOT_LEVEL = 1


def one_shot_jit(fn, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)``, compiled by XLA:CPU at LLVM optimisation level ``ONE_SHOT_LEVEL``
    instead of 3: for programs that run once or rarely (a fresh train state, the checkpoint checks),
    whose compilation costs more than their run. A fresh train state, most of whose code is the
    random initialisers' unrolled Threefry rounds, compiles several times faster and comes out bit
    for bit the same (tests/test_train.py checks it against the eager initialisation); a train step
    at a lower level trains slower and is not bitwise the same, so steps keep the default (measured:
    benchmarks/RESULTS.md). Other backends compile as ``jax.jit`` does; the backend is read at the
    first call, after the entry points' XLA_FLAGS."""
    @functools.cache
    def jitted():
        cpu = jax.default_backend() == "cpu"
        return jax.jit(fn, compiler_options={"xla_backend_optimization_level": ONE_SHOT_LEVEL} if cpu else None,
                       **jit_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return jitted()(*args, **kwargs)
    return call
