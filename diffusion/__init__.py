"""Diffusion models as pure JAX functions: schedules, the Gaussian process maths, losses,
likelihood, samplers and guidance; Flax networks live in ``diffusion.models``."""
import os
import re

_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def _cpu_convolutions_on_xla_kernels() -> None:
    """XLA:CPU (jaxlib ≥ 0.10) hands convolutions to YNNPACK by default; on the U-Nets here its
    kernels for 7×7–14×14 feature maps are ~2× slower than XLA's own, and turning it off takes
    MNIST U-Net training on 2 cores from 0.45× to 0.71× PyTorch's images/s with the CIFAR-10 U-Net
    unchanged (benchmarks/RESULTS.md). Applied before JAX starts its CPU backend; a user's own
    setting of the flag, or ``DIFFUSION_KEEP_XLA_FLAGS=1``, leaves XLA_FLAGS alone."""
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("DIFFUSION_KEEP_XLA_FLAGS") or _YNN_FLAG.rstrip("=") in flags:
        return
    from jaxlib import version
    major, minor = re.match(r"(\d+)\.(\d+)", version.__version__).groups()   # "0.10.1", "0.11.0rc1", …
    if (int(major), int(minor)) >= (0, 10):
        os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG}".strip()


_cpu_convolutions_on_xla_kernels()
