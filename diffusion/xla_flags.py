"""XLA settings measured to help on CPU, applied only when asked.

The entry points (``experiments.*``, ``benchmarks.run``) ask; in a notebook, opt in before the
first JAX computation with ``from diffusion import xla_flags; xla_flags.use_xla_cpu_convolutions()``.
``import diffusion`` leaves the environment alone.
"""
import os
import re

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def use_xla_cpu_convolutions() -> None:
    """Route CPU convolutions to XLA's own kernels instead of YNNPACK.

    XLA:CPU (jaxlib ≥ 0.10) hands convolutions to YNNPACK by default; on the U-Nets here its
    kernels for 7×7–14×14 feature maps are ~2× slower than XLA's own, and turning it off takes
    MNIST U-Net training on 2 cores from 0.45× to 0.71× PyTorch's images/s with the CIFAR-10 U-Net
    unchanged (benchmarks/RESULTS.md). It takes effect only before JAX starts its CPU backend; a
    user's own setting of the flag, or ``DIFFUSION_KEEP_XLA_FLAGS=1``, leaves XLA_FLAGS alone.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("DIFFUSION_KEEP_XLA_FLAGS") or YNN_FLAG.rstrip("=") in flags:
        return
    from jaxlib import version
    major, minor = re.match(r"(\d+)\.(\d+)", version.__version__).groups()   # "0.10.1", "0.11.0rc1", …
    if (int(major), int(minor)) >= (0, 10):
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
