"""Preemption-safe training (issue 24): SIGTERM, or JAX's preemption notice, saves the step the run
reached after that step's own finite check, the run stops with status 143, and rerunning the same
command resumes from it bit for bit."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import base
from diffusion.checkpoints import Checkpointer
from experiments import loop
from tiny_configs import assert_same_params, poison_batches_at, shrink

REPO = Path(__file__).resolve().parents[1]


def tiny():
    """4 steps, checkpoints at 2 and 4, metrics read one step late except on those steps."""
    c = shrink(base.get_config())
    c.train.log_every = 5
    return c


def sigterm_at(monkeypatch, step):
    """Send this process SIGTERM while step ``step`` runs (0-based: the run then finishes that step,
    ``step + 1`` updates, and saves it), from the loop's per-step preemption query."""
    real = Checkpointer.reached_preemption

    def reached_preemption(self, done):
        if done == step + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, done)

    monkeypatch.setattr(Checkpointer, "reached_preemption", reached_preemption)


@pytest.fixture
def previous_handler():
    """A Python SIGTERM handler that records what reaches it, in place around the test."""
    received = []
    handler = lambda signum, frame: received.append(signum)   # noqa: E731
    old = signal.signal(signal.SIGTERM, handler)
    yield handler, received
    signal.signal(signal.SIGTERM, old)


@pytest.mark.system
def test_sigterm_saves_the_step_reached_and_the_rerun_resumes_bitwise(tmp_path, monkeypatch, previous_handler,
                                                                       capsys, tiny_run):
    """Step 3 is not a log or checkpoint step (its metrics would be read late); SIGTERM during it
    makes it a save after its own read. The uninterrupted run is the session's ``tiny_run`` (the
    same training; only its log interval differs, which no update reads)."""
    handler, received = previous_handler
    straight = tiny_run[1]
    with monkeypatch.context() as m:
        sigterm_at(m, 2)
        with pytest.raises(loop.Preempted) as e:
            loop.train_and_evaluate(tiny(), tmp_path / "b")
    assert e.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is handler and received == []   # restored; acted on, not passed on
    checkpoints = tmp_path / "b" / "checkpoints"
    assert Checkpointer(checkpoints).latest_step() == 3
    assert (f"stopped by SIGTERM at step 3 of 4: checkpoint saved in {checkpoints / '3'}; rerun the same "
            "command to resume from it") in capsys.readouterr().out
    resumed = loop.train_and_evaluate(tiny(), tmp_path / "b")
    assert int(resumed.step) == int(straight.step) == 4
    assert_same_params(straight, resumed)


@pytest.mark.system
def test_a_preemption_notice_saves_and_stops(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Checkpointer, "reached_preemption", lambda self, step: step == 3)
    with pytest.raises(loop.Preempted):
        loop.train_and_evaluate(tiny(), tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 3
    assert "stopped by a preemption notice at step 3 of 4" in capsys.readouterr().out


@pytest.mark.system
def test_a_non_finite_step_is_not_saved_on_sigterm(tmp_path, monkeypatch, previous_handler):
    """SIGTERM during a non-finite step: the run stops on the step's own check, and the last
    finite checkpoint (2) stays the latest; nothing of step 3 is written."""
    poison_batches_at(monkeypatch, 2)
    sigterm_at(monkeypatch, 2)
    with pytest.raises(loop.NonFiniteStepError, match=r"at step 2.*last finite checkpoint \(step 2\)"):
        loop.train_and_evaluate(tiny(), tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
    assert signal.getsignal(signal.SIGTERM) is previous_handler[0]


@pytest.mark.system
def test_sigterm_in_the_last_step_finishes_the_run_then_passes_the_signal_on(tmp_path, monkeypatch,
                                                                             previous_handler):
    handler, received = previous_handler
    sigterm_at(monkeypatch, 3)
    state = loop.train_and_evaluate(tiny(), tmp_path)
    assert int(state.step) == 4 and Checkpointer(tmp_path / "checkpoints").latest_step() == 4
    assert received == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is handler


def test_the_loop_schedule_saves_and_stops_on_a_preemption_except_at_the_last_step():
    """``loop.events_after`` alone: a preemption requested at step 3 of 4 (no interval due) saves and
    stops, and the step is read first; at step 4 of 4 it is no preemption, only the last step's log and save."""
    every = dict(log_every=5, checkpoint_every=2, sample_every=0)
    assert loop.events_after(3, 4, **every, preemption_requested=True) == loop.Events(save=True, preempt=True)
    assert loop.events_after(3, 4, **every, preemption_requested=True).reads_now
    assert loop.events_after(3, 4, **every) == loop.Events()
    assert loop.events_after(4, 4, **every, preemption_requested=True) == loop.Events(log=True, save=True)


# --- the command line, killed as a scheduler would ---

STEPS = 40


def command(workdir):
    """``experiments.train`` on configs/mnist.py shrunk as ``tiny_configs.shrink`` does, one checkpoint at the end."""
    overrides = {"model.base_channels": 8, "model.channel_mult": "(1,2)", "model.num_res_blocks": 1,
                 "model.attention_resolutions": "(14,)", "model.norm_groups": 4, "train.batch_size": 16,
                 "train.num_steps": STEPS, "train.log_every": 1, "train.checkpoint_every": 1000,
                 "train.sample_every": 1000, "sample.num": 8, "sample.steps": 2, "optim.warmup_steps": 2}
    return [sys.executable, "-m", "experiments.train", "--config", "configs/mnist.py", "--workdir", str(workdir),
            *[f"--config.{k}={v}" for k, v in overrides.items()]]


def logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    return [json.loads(l)["step"] for l in path.read_text().splitlines() if l.endswith("}")] if path.exists() else []


@pytest.mark.system
def test_sigterm_to_the_command_line_saves_the_step_reached_and_exits_143(tmp_path):
    """What a scheduler sees; the resume from such a checkpoint is checked bit for bit in-process
    (test_sigterm_saves_the_step_reached_and_the_rerun_resumes_bitwise), not again here."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"))
    workdir = tmp_path / "run"
    proc = subprocess.Popen(command(workdir), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while len(logged_steps(workdir)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    reached = logged_steps(workdir)[-1]
    assert 2 <= reached < STEPS, "the run ended before SIGTERM: raise STEPS"
    assert Checkpointer(workdir / "checkpoints").latest_step() == reached
    assert (f"stopped by SIGTERM at step {reached} of {STEPS}: checkpoint saved in "
            f"{workdir / 'checkpoints' / str(reached)}; rerun the same command to resume from it") in out
