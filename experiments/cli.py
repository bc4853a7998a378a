"""What the entry points share on the command line: the CPU's XLA settings, flag parsing that
answers a mistyped config override (``--config.optim.lrr=1``) with one line naming it and the
closest field, not a traceback, and one line for a full disk."""
from __future__ import annotations

import difflib
import errno
import importlib.util
import os
import sys
from typing import Optional

import ml_collections
from absl import app, flags

from diffusion import xla_flags


def _config_file(argv: list[str]) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":")[0]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":")[0]
    return None


def _field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    names = []
    for key, value in config.items():
        names.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            names += _field_names(value, f"{prefix}{key}.")
    return names


def unknown_override(argv: list[str]) -> Optional[str]:
    """The one-line error for the first ``--config.<field>`` in ``argv`` that the config file lacks."""
    path = _config_file(argv)
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("_config_for_flags", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    known = _field_names(config)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        name = arg.removeprefix("--config.").split("=", 1)[0]
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean --config.{close[0]}?" if close else ""
            return f"error: --config.{name} is not a field of {path}{hint}"
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """``flags.FLAGS(argv)``, exiting with one line when a config override names no field."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError):
        message = unknown_override(argv)
        if message is None:
            raise
        sys.exit(message)


def run(main):
    """``app.run(main)`` with ``parse_flags`` and the CPU's XLA settings applied before JAX starts
    (``xla_flags.use_xla_cpu_convolutions``); a full disk ends the process with its one message."""
    xla_flags.use_xla_cpu_convolutions()
    def guarded(argv):
        try:
            return main(argv)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            where = f" ({e.filename})" if e.filename else ""
            print(f"error: {e.strerror}{where}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            # Orbax's abandoned writes would print thousands of lines of 'Event loop is closed'
            # tracebacks during interpreter shutdown, burying the message: exit without one.
            os._exit(1)
    app.run(guarded, flags_parser=parse_flags)
