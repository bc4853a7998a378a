"""The benchmark script runs end to end on its tiny suite (no timing is asserted); the CPU convolution
setting the benchmarks chose applies only when asked, and `import diffusion` leaves XLA_FLAGS alone."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow     # ~115 s cold: the script end to end
def test_benchmark_script_prints_its_table(tmp_path):
    peer = importlib.util.find_spec("diffusers") is not None and importlib.util.find_spec("torch") is not None
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, "-m", "benchmarks.run", "--suite", "tiny", "--models", "mnist", "--out", str(out)]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"))
    proc = subprocess.run(cmd + ([] if peer else ["--no-peer"]), cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for row in ("| mnist | train images/s |", "| mnist | DDIM-50 images/s |", "| mnist | DDPM-50 images/s |"):
        assert row in text
    assert "GFLOP/s (" in text and ("×" in text if peer else True)
    for row in ("| mnist | dpmpp_2m | 20 |", "| mnist | dpm_solver_3 | 19 |", "| mnist | heun | 19 |"):
        assert row in text


@pytest.mark.slow     # ~110 s cold
def test_latent_benchmark_prints_its_tables():
    """benchmarks.latent on tiny networks: the study's autoencoders and U-Nets, pixel beside latent."""
    cmd = [sys.executable, "-m", "benchmarks.latent", "--tiny", "--batch", "4", "--models", "pixel,kl_f4"]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| kl_f4 | 8 × 8 × 3 |" in proc.stdout and "| pixel | " in proc.stdout
    assert proc.stdout.count("| kl_f4 |") == 2 and "| vq_f4 |" not in proc.stdout   # an autoencoder row, a U-Net row
    bad = subprocess.run(cmd[:3] + ["--models", "kl_f16"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--models kl_f16: not a latent_diffusion study model" in bad.stderr


PROBE = """
import os, sys
before = os.environ.get("XLA_FLAGS", "")
import diffusion, diffusion.samplers, diffusion.xla_flags
assert os.environ.get("XLA_FLAGS", "") == before, "import diffusion touched XLA_FLAGS"
if sys.argv[1] == "opt-in":
    diffusion.xla_flags.use_xla_cpu_convolutions()
import jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
hlo = jax.jit(conv).lower(jnp.ones((8, 28, 28, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text()
print(os.environ.get("XLA_FLAGS", ""), "|", "__ynn_fusion" in hlo)
"""


@pytest.mark.parametrize("mode, extra, flags, ynn", [
    ("import-only", {}, "", True),                                             # a notebook: JAX's defaults
    ("opt-in", {}, "--xla_cpu_experimental_ynn_fusion_type=", False),          # the entry points' CPU setting
    ("opt-in", {"DIFFUSION_KEEP_XLA_FLAGS": "1"}, "", True),                   # opted out: XLA's default
    ("opt-in", {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"},
     "--xla_cpu_experimental_ynn_fusion_type=individual_convolution", True),  # the user's own value wins
])
def test_cpu_convolutions_go_to_xla_kernels_only_when_asked(mode, extra, flags, ynn):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DIFFUSION_KEEP_XLA_FLAGS")}
    env.update(extra, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"{flags} | {ynn}".strip()


@pytest.mark.slow
def test_gpu_suite_keeps_what_an_item_measured_before_it_failed(tmp_path, monkeypatch):
    """The GPU suite's plan on tiny shapes (CPU): an item that fails after timing the train step keeps
    that figure (marked partial) beside its error, the results file holds it, and the report renders
    the row; items not asked for do not run."""
    import json

    from benchmarks import gpu

    def broken(*args):
        raise RuntimeError("no FLOP count here")
    monkeypatch.setattr(gpu, "forward_flops", broken)
    path = tmp_path / "results.json"
    results = gpu.run_suite(600, path, tiny=True, with_peer=False, only=("environment", "ours/cifar10/float32"))
    record = results["items"]["ours/cifar10/float32"]
    assert record["partial"] and record["train_img_s"] > 0 and record["train_batch"] == 4
    assert "no FLOP count here" in results["errors"]["ours/cifar10/float32"]
    assert set(results["items"]) == {"environment", "ours/cifar10/float32"}
    assert json.loads(path.read_text())["items"]["ours/cifar10/float32"]["partial"]
    assert "| cifar10 | float32 | train images/s | 4 |" in gpu.report(results)
