"""What a checkpoint's save and restore check, apart from orbax: every leaf finite, every leaf's
checksum (both computed on device, so nothing global is copied to a host), and a full disk
recognised among orbax's failures, with the noise of its abandoned writes kept off the terminal.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import sys
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import xla_flags


def named_leaves(tree: Any) -> dict[str, Any]:
    """``{"params/conv_in/kernel": leaf, ...}`` in pytree order."""
    return {jax.tree_util.keystr(path, simple=True, separator="/") or "<root>": leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@xla_flags.one_shot_jit
def _finite_flags(leaves: list) -> jax.Array:
    """One bool per leaf: all its elements are finite."""
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def _rows(fn, leaves: list) -> list:
    """``fn(leaves)``, a jitted function giving one row per leaf, called once per set of devices
    the leaves live on (one computation cannot mix arrays committed to different devices)."""
    arrays = [jnp.asarray(x) for x in leaves]
    groups: dict[frozenset, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(frozenset(a.sharding.device_set), []).append(i)
    rows = [None] * len(arrays)
    for indices in groups.values():
        for i, row in zip(indices, np.asarray(fn([arrays[i] for i in indices]))):
            rows[i] = row
    return rows


def nonfinite_leaves(state: Any) -> list[str]:
    """Names of ``state``'s floating leaves that hold a NaN or Inf (jitted on device; only one
    bool per leaf comes to the host)."""
    named = {k: v for k, v in named_leaves(state).items() if jnp.issubdtype(jnp.result_type(v), jnp.inexact)}
    flags = _rows(_finite_flags, list(named.values()))
    return [name for name, finite in zip(named, flags) if not finite]


def _bits(x: jax.Array) -> jax.Array:
    """``x``'s raw bits as a flat uint32 vector; a 64-bit element gives two words."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    word = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, word).astype(jnp.uint32).ravel()


def _checksum(x: jax.Array) -> jax.Array:
    """[Σ bits, Σ bits·(2i+1)] mod 2³² over the flat index i: integer wrap-around sums are exact
    in any order, so the result does not depend on how the array is sharded; the odd weights make
    it sensitive to moved as well as changed words."""
    bits = _bits(x)
    weights = 2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)])


@xla_flags.one_shot_jit
def _checksum_rows(leaves: list) -> jax.Array:
    return jnp.stack([_checksum(x) for x in leaves])


def checksums(state: Any) -> dict[str, list[int]]:
    """``{leaf path: [sum, weighted sum]}`` of ``state``'s raw bits, computed on device."""
    named = named_leaves(state)
    rows = _rows(_checksum_rows, list(named.values()))
    return {name: [int(a), int(b)] for name, (a, b) in zip(named, rows)}


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
