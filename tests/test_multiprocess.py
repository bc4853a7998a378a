"""Several processes on this machine, as on a pod: 2 processes × 4 CPU devices joined through
``--coordinator 127.0.0.1:<port>`` train, resume, sample and evaluate exactly as 1 process with 8
devices, and checkpoints move between the two layouts (issue 24).

Run alone with ``python -m pytest -q -m multiprocess``; a failure prints every process's log.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import base
from experiments import inference
from experiments.studies.plan import overrides
from tiny_configs import shrink

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]   # ~220 s of one worker, cold
REPO = Path(__file__).resolve().parents[1]
TINY = overrides(shrink(base.get_config()), base.get_config())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, *args, timeout: int = 600) -> list[str]:
    """``python -m <args>`` as ``processes`` processes of 8 // processes CPU devices each (one plain
    process for 1); asserts every one exits 0 within ``timeout`` seconds, printing all their logs
    when one does not (a hang too: the processes are killed first). Each writes to its own file, so
    none blocks on a pipe nobody reads."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
    joined = [] if processes == 1 else ["--coordinator", f"127.0.0.1:{free_port()}",
                                        "--num_processes", str(processes), "--coordinator_timeout", "60"]
    with tempfile.TemporaryDirectory() as logs_dir:
        files = [open(Path(logs_dir) / f"process_{i}.log", "w+") for i in range(processes)]
        procs = [subprocess.Popen([sys.executable, "-m", *args, *joined,
                                   *(["--process_id", str(i)] if processes > 1 else [])],
                                  cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
                 for i, f in enumerate(files)]
        deadline, hung = time.monotonic() + timeout, False
        for p in procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                hung = True
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        logs = []
        for f in files:
            f.seek(0)
            logs.append(f.read())
            f.close()
    if hung or any(p.returncode for p in procs):
        pytest.fail((f"hung past {timeout} s, killed\n" if hung else "")
                    + "\n".join(f"--- process {i} (exit {p.returncode}) ---\n{log[-4000:]}"
                                 for i, (p, log) in enumerate(zip(procs, logs))))
    return logs


def train(processes: int, workdir: Path, steps: int):
    """The tiny run to ``steps`` in ``processes`` processes, with Adam's ε at 1e-3 (as
    tests/test_fsdp.py compares sharded steps): the gradient all-reduce over 2 × 4 devices sums in
    another order than over 8, and at the default ε = 1e-8 Adam's m/(√v + ε) turns those last-bit
    differences of a near-zero gradient (|g| ~ ε) into differences of the update itself."""
    launch(processes, "experiments.train", "--config", "configs/base.py", "--workdir", str(workdir),
           *TINY, "--config.optim.eps=0.001", f"--config.train.num_steps={steps}")


def losses(workdir: Path) -> dict:
    return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}


def assert_same_parameters(a: Path, b: Path):
    """The EMA parameters of two runs agree within 1e-5."""
    flat = lambda p: np.concatenate([np.ravel(x) for x in jax.tree.leaves(p)])
    np.testing.assert_allclose(flat(inference.load_run(a).params), flat(inference.load_run(b).params), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two processes from scratch to step 4; one process to 4, resumed to 6 (a resume is bitwise the
    straight run: tests/test_train.py); the two-process checkpoint at 4 resumed to 6 by one process,
    and the one-process checkpoint at 4 by two (which is also two processes resuming)."""
    root = tmp_path_factory.mktemp("multiprocess")
    two, one, moved, spread = root / "two", root / "one", root / "moved", root / "spread"
    train(2, two, 4)
    shutil.copytree(two, moved)
    train(1, one, 4)
    shutil.copytree(one, spread)
    train(1, one, 6)
    train(1, moved, 6)
    train(2, spread, 6)
    return two, one, moved, spread


def test_two_processes_train_and_resume_as_one(runs):
    """Per-step losses agree within 1e-5 whether 2 processes or 1 ran the steps, and a checkpoint
    resumes in the other layout (2 → 1, 1 → 2) to the same EMA parameters at step 6; process 0
    alone writes the logs and the sample grid."""
    two, one, moved, spread = runs
    reference = losses(one)
    for steps, last in ((losses(two), 4), (losses(moved), 6), (losses(spread), 6)):
        assert sorted(steps) == list(range(1, last + 1))
        np.testing.assert_allclose([steps[k] for k in sorted(steps)], [reference[k] for k in sorted(steps)],
                                   rtol=1e-5)
    for run in (moved, spread):
        assert_same_parameters(run, one)
    assert sorted(p.name for p in (two / "samples").glob("*.png")) == ["step_0000004.png"]
    assert sorted(p.name for p in (spread / "samples").glob("*.png")) == ["step_0000004.png", "step_0000006.png"]


def test_two_processes_sample_and_evaluate_as_one(runs, tmp_path):
    """A 1-process checkpoint restored by 2 processes draws the same samples as 1 process does (one
    grid, written by process 0), and ``evaluate`` measures the same FID and NLL."""
    two, one, _, _ = runs
    args = ("experiments.sample", "--workdir", str(one), "--sampler", "ddim", "--steps", "2", "--num", "16",
            "--batch", "8")
    launch(2, *args, "--out", str(tmp_path / "two"))
    launch(1, *args, "--out", str(tmp_path / "one"))
    [npz_two], [npz_one] = (list((tmp_path / d).glob("*.npz")) for d in ("two", "one"))
    np.testing.assert_array_equal(np.load(npz_two)["image"], np.load(npz_one)["image"])
    assert len(list((tmp_path / "two").glob("*.png"))) == 1
    evaluate = ("experiments.evaluate", "--workdir", str(two), "--samplers", "ddim:2", "--num", "16", "--batch", "8",
                "--nll_examples", "8")
    measured = {}
    for processes in (2, 1):
        shutil.rmtree(two / "eval", ignore_errors=True)     # measure afresh, not from the cached samples
        launch(processes, *evaluate)
        measured[processes] = (json.loads((two / "eval" / "ddim2_eta0.json").read_text())["fid"],
                               json.loads((two / "eval" / "nll.json").read_text())["bits_per_dim"])
    np.testing.assert_allclose(measured[2], measured[1], rtol=1e-5)


def test_a_coordinator_that_never_answers_is_an_error_not_a_hang():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config", "configs/base.py", "--workdir",
                           "/nonexistent/never", "--coordinator", f"127.0.0.1:{free_port()}", "--num_processes", "2",
                           "--process_id", "1", "--coordinator_timeout", "5"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "did not meet the others at the coordinator" in proc.stderr
