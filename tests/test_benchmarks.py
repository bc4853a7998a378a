"""The benchmark script runs end to end on its tiny suite (no timing is asserted)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
