"""What the entry points share on the command line: the CPU's XLA settings, flag parsing that
answers a mistyped config override (``--config.optim.lrr=1``) with one line naming it and the
closest field, not a traceback, and one line for a full disk."""
from __future__ import annotations

import difflib
import errno
import importlib.util
import os
import socket
import sys
import time
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


flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with the cluster's own settings "
                  "(TPU pods, SLURM, …) before anything else.")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for processes started by hand (with "
                    "--num_processes and --process_id); 127.0.0.1:<port> runs several processes on this machine.")
flags.DEFINE_integer("num_processes", None, "How many processes the run has (with --coordinator).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, --num_processes) (with --coordinator).")
flags.DEFINE_integer("coordinator_timeout", 120, "Seconds to wait for every process to reach the coordinator.")


def define_training_flags(outputs: str, config_help: str):
    """The flags every training entry point takes: ``--config`` (with overrides), ``--workdir``
    (holding the checkpoints, logs and ``outputs``) and ``--fall_back_to_good_checkpoint``."""
    from ml_collections import config_flags
    flags.DEFINE_string("workdir", None, f"Directory for checkpoints, logs and {outputs}.")
    flags.DEFINE_bool("fall_back_to_good_checkpoint", False,
                      "When the latest checkpoint fails its checksums, move it to <workdir>/corrupt_checkpoints "
                      "and resume from the newest one that verifies (without it, a corrupt checkpoint is an error).")
    config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    flags.mark_flags_as_required(["config", "workdir"])


def start_distributed():
    """``jax.distributed.initialize`` as the flags ask: nothing (one process), the cluster's own
    settings (``--distributed``), or ``--coordinator`` / ``--num_processes`` / ``--process_id``,
    with a coordinator that cannot be reached in ``--coordinator_timeout`` seconds an error that
    says so rather than a hang. CPU processes exchange data through gloo."""
    f = flags.FLAGS
    given = {"--coordinator": f.coordinator, "--num_processes": f.num_processes, "--process_id": f.process_id}
    if all(v is None for v in given.values()):
        if f.distributed:
            import jax
            jax.distributed.initialize()
        return
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise ValueError(f"--coordinator, --num_processes and --process_id go together: {', '.join(missing)} "
                         "missing (e.g. --coordinator 127.0.0.1:12345 --num_processes 2 --process_id 0)")
    if not (f.num_processes >= 1 and 0 <= f.process_id < f.num_processes):
        raise ValueError(f"--process_id={f.process_id} must lie in [0, --num_processes={f.num_processes})")
    unmet = (f"process {f.process_id} of {f.num_processes} did not meet the others at the coordinator "
             f"{f.coordinator} within {f.coordinator_timeout} s: start every process with the same --coordinator "
             "(process 0 serves it) and --num_processes")
    # jaxlib ends the process from C++ when the coordinator's deadline passes, so a process other
    # than 0 first waits for the coordinator's port itself, to fail with a message instead.
    if f.process_id != 0 and not _port_opens(f.coordinator, f.coordinator_timeout):
        raise ConnectionError(unmet)
    print(f"process {f.process_id} of {f.num_processes}: joining at {f.coordinator} (up to "
          f"{f.coordinator_timeout} s; if this process is then killed, {unmet[unmet.index('start'):]})", flush=True)
    import jax
    importlib.import_module("orbax.checkpoint")     # defines the flag set below
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Orbax's barriers through the coordination service (which waits) rather than a collective.
    f.experimental_orbax_use_distributed_barrier = True
    jax.distributed.initialize(coordinator_address=f.coordinator, num_processes=f.num_processes,
                               process_id=f.process_id, initialization_timeout=f.coordinator_timeout)


def _port_opens(address: str, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within ``timeout`` seconds (retrying)."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)


def run(main):
    """``app.run(main)`` with ``parse_flags``, the CPU's XLA settings applied before JAX starts
    (``xla_flags.use_xla_cpu_convolutions``) and the processes joined (``start_distributed``); a
    full disk ends the process with its one message."""
    xla_flags.use_xla_cpu_convolutions()
    def guarded(argv):
        try:
            start_distributed()
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
