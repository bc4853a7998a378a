"""A checkpoint save that failed: recognised (a full disk among orbax's and TensorStore's errors),
kept off the terminal (the tracebacks and log records of the writes orbax abandons), and cleaned up
so that it costs nothing but itself (what it had written removed, every older checkpoint intact).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import sys
import threading
import time
from pathlib import Path

import orbax.checkpoint as ocp

from diffusion import parallel

SETTLE_PASSES, SETTLE_PAUSE_S = 25, 0.2   # cleaning up after a failed save: up to ~5 s


class DiskFullError(OSError):
    """A save failed for lack of disk space; the previous checkpoints are intact."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``"<type>: <first line of its message>"`` (at most ``limit`` characters of it), for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit] if text else ''}"


def _exception_chain(exc: BaseException):
    """``exc`` and everything behind it: causes, contexts and the members of exception groups."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` comes from ENOSPC: an ``OSError`` anywhere in its chain, or TensorStore's
    wording (it reports ENOSPC as a ``ValueError`` 'RESOURCE_EXHAUSTED: … No space left on device')."""
    return any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)
               for e in _exception_chain(exc))


def _is_closed_loop_noise(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _AbandonedWriteRecords(logging.Filter):
    """Drops orbax's ERROR record of each write thread that a failed save abandoned."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_SignalingThread.run() raised an exception" not in record.getMessage()


@contextlib.contextmanager
def failed_writes_silenced():
    """While orbax saves: when one TensorStore write fails, orbax abandons the others, whose
    callbacks then find their event loop closed and print a traceback each (thousands for one
    state), and orbax logs each failed thread at ERROR. ``save`` raises the one error that matters,
    so exactly those are dropped (RuntimeError 'Event loop is closed' and orbax's abandoned-thread
    records); every other exception and log record still prints. The abandoned callbacks go on
    firing after a failed save, so the filters stay then; a successful save removes them."""
    hooks = sys.excepthook, sys.unraisablehook, threading.excepthook
    records = _AbandonedWriteRecords()

    def excepthook(kind, value, tb):
        if not _is_closed_loop_noise(value):
            hooks[0](kind, value, tb)

    def unraisablehook(unraisable):
        if not _is_closed_loop_noise(unraisable.exc_value):
            hooks[1](unraisable)

    def thread_hook(args):
        if not _is_closed_loop_noise(args.exc_value):
            hooks[2](args)

    sys.excepthook, sys.unraisablehook, threading.excepthook = excepthook, unraisablehook, thread_hook
    logging.getLogger("absl").addFilter(records)
    yield
    sys.excepthook, sys.unraisablehook, threading.excepthook = hooks
    logging.getLogger("absl").removeFilter(records)


class _BackgroundFailureRecords(logging.Filter):
    """Drops the ERROR records (with tracebacks) that orbax logs when a background write fails: the
    same error is raised by ``Checkpointer.wait``, with one line for a full disk."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("in background save thread" in message or "Save Finalize thread" in message and "failed" in message)


BACKGROUND_FAILURE_RECORDS = _BackgroundFailureRecords()


def clean_up_failed_save(manager: ocp.CheckpointManager, directory: Path, step: int, before: set,
                         error: Exception) -> Exception:
    """Clean up after save ``step`` into ``directory`` failed with ``error`` (``before``: the
    directory's entries before the save); the exception to raise for it (``error`` itself, to be
    re-raised as it came, unless the disk is full). Orbax's other background writes of that save are
    let finish first, and again after the clean-up, so that none of them fails later (say on a
    directory removed here) and surfaces at the next, unrelated wait."""
    _drain_failed_writes(manager)
    _discard_failed_save(manager, directory, step, before)
    _drain_failed_writes(manager)
    if is_disk_full(error):
        return DiskFullError(_disk_full_message(manager, directory, step, error))
    return error


def _drain_failed_writes(manager: ocp.CheckpointManager):
    """Wait out the failed save's remaining background writes, dropping their errors (the first
    one is already being reported); bounded, in case orbax keeps re-raising the same one."""
    for _ in range(SETTLE_PASSES):
        try:
            manager.wait_until_finished()
            return
        except Exception:   # noqa: BLE001 — the failed save's own errors, reported once by the caller
            continue


def _discard_failed_save(manager: ocp.CheckpointManager, directory: Path, step: int, before: set):
    """Remove the step directories (final or orbax's temporary ones) that a failed save created,
    and re-read the steps on disk into orbax's view.

    When orbax raises, TensorStore may still be finishing writes it abandoned, which recreate
    their directories; so removal repeats until a pass finds nothing (bounded). A leftover
    ``<step>.orbax-checkpoint-tmp`` would be harmless anyway: orbax lists no step for it and
    replaces it when that step is saved again."""
    def remove():
        for _ in range(SETTLE_PASSES):
            leftovers = [p for p in set(directory.iterdir()) - before if p.name.split(".")[0] == str(step)]
            if not leftovers:
                return
            for p in leftovers:
                shutil.rmtree(p, ignore_errors=True)
            time.sleep(SETTLE_PAUSE_S)
    parallel.on_primary(remove, f"checkpoints: discard failed save {step}")
    manager.reload()


def _disk_full_message(manager: ocp.CheckpointManager, directory: Path, step: int, error: BaseException) -> str:
    free = shutil.disk_usage(directory).free
    kept = manager.latest_step()
    previous = (f"the previous checkpoint (step {kept}) is intact and a rerun after freeing space "
                f"resumes from it") if kept is not None else \
        "there is no earlier checkpoint: a rerun after freeing space starts over"
    return (f"disk full: checkpoint step {step} could not be saved in {directory} "
            f"({free:,} bytes free; {first_line(error)}); nothing of step {step} was kept, "
            f"{previous}")
