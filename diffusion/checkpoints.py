"""Orbax checkpoints of a ``TrainState`` with the run's config, data position and checksums beside it.

What a checkpoint promises, and how each failure is named:

* a checkpoint whose model, diffusion or data shape differs from the running config is refused,
  naming the fields (``ValueError``);
* a state with a NaN or Inf is never written (``NonFiniteStateError``), so the last good
  checkpoint is never replaced by a broken one;
* every leaf's checksum is saved in the checkpoint's JSON meta and checked on restore, so damaged
  data files fail loudly (``CorruptCheckpointError``) instead of restoring as garbage; only an
  explicit ``restore_latest_good(..., fall_back=True)`` moves a bad checkpoint aside;
* a save on a full disk leaves the previous checkpoints as they were and says so
  (``checkpoint_failures.DiskFullError``); old checkpoints are pruned only after a new one is complete.

Saves are asynchronous: ``save`` refuses a non-finite state, computes the checksums and hands the
state to orbax, which copies it off the devices and returns; the files are written in the
background. ``wait`` blocks until they are, and every read (``latest_step``, ``read_meta``,
``restore``), the next save and ``close`` call it first, so a failed write (a full disk included)
is raised there, by the next of these, with the same message as a synchronous one.

What is saved beside the state, and how a saved config is compared with the running one:
``checkpoint_meta``; the per-leaf checks: ``checkpoint_checks``; a failed save recognised and
cleaned up: ``checkpoint_failures``.
"""
from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store   # the Store orbax's default handler is given

from diffusion import parallel
from diffusion.checkpoint_checks import checksums, named_leaves, nonfinite_leaves
from diffusion.checkpoint_failures import (BACKGROUND_FAILURE_RECORDS, clean_up_failed_save, failed_writes_silenced,
                                           first_line)
from diffusion.checkpoint_meta import config_differences, same_structure

CORRUPT_DIR = "corrupt_checkpoints"   # beside the checkpoints directory, in the workdir
NAMED_LEAVES = 5                      # how many bad leaves an error message lists


class NonFiniteStateError(FloatingPointError):
    """A state with a NaN or Inf was about to be saved; nothing was written."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint's data cannot be read, or does not match the checksums saved with it."""


def _listing(names: list[str]) -> str:
    more = len(names) - NAMED_LEAVES
    return ", ".join(names[:NAMED_LEAVES]) + (f" and {more} more" if more > 0 else "")


def _say(line: str):
    if jax.process_index() == 0:
        print(line, flush=True)


@functools.cache
def save_replicated_arrays_whole_on_cpu() -> None:
    """On the CPU backend, make orbax copy each replicated array off the devices whole, from its
    first replica, instead of in one slice per replica.

    Orbax's default ``ArrayHandler`` splits that copy among the replicas (replica-parallel saving)
    unless ``JAX_PLATFORMS`` names a GPU. CPU devices share one host memory, so the split buys
    nothing there and costs a jitted slice per replica and array, each compiled for its shape, which
    makes saving a state replicated on 8 virtual CPU devices several times slower (measured:
    benchmarks/RESULTS.md). The handler is orbax's default but for that option (its array metadata store included), set
    once per process in orbax's global registry, where orbax takes per-type options; the warning
    orbax logs on replacing a handler is held back (a run's stderr is for what the user must read)."""
    if jax.default_backend() != "cpu":
        return
    replacing = lambda record: "Type handler registry" not in record.getMessage()
    logging.getLogger("absl").addFilter(replacing)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()), override=True)
    finally:
        logging.getLogger("absl").removeFilter(replacing)


class Checkpointer:
    """``<workdir>/checkpoints`` managed by ``ocp.CheckpointManager``; call on every host.

    Saves are asynchronous (orbax's default): ``save`` returns once the state is copied off the
    devices, and ``wait`` blocks until its files are complete, raising a failed write there. Reads,
    the next save and ``close`` wait first; so does ``latest_step``, so it never names a step still
    being written. Orbax keeps every step (no ``max_to_keep``): this class deletes all but the
    newest ``keep`` in ``wait``, only after a save has completed, so a failed save can never cost an
    older checkpoint. Steps that are multiples of ``keep_period`` (> 0) are milestones, never deleted.
    """

    def __init__(self, directory, *, keep: int = 3, keep_period: int = 0):
        self.directory = Path(directory).absolute()
        self.keep, self.keep_period = keep, keep_period
        save_replicated_arrays_whole_on_cpu()
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(create=True))
        self._pending = None   # (step, directory entries before it, its noise filter) while orbax writes it

    @property
    def corrupt_directory(self) -> Path:
        """``<workdir>/corrupt_checkpoints``: where ``restore_latest_good(..., fall_back=True)`` moves bad ones."""
        return self.directory.parent / CORRUPT_DIR

    def latest_step(self) -> Optional[int]:
        """The newest complete checkpoint's step (after waiting for a save in progress), or None."""
        self.wait()
        return self.manager.latest_step()

    def reached_preemption(self, step: int) -> bool:
        """Whether every process has reached the step at which JAX's preemption service (started by
        ``jax.distributed.initialize``) asks for a save; call on every host at every step."""
        return self.manager.reached_preemption(step)

    def _previous_step(self, step: int) -> Optional[int]:
        return max((s for s in self.manager.all_steps() if s < step), default=None)

    # --- saving ---

    def save(self, step: int, state: Any, *, config: dict, data_position: int,
             data: Optional[grain.DatasetIterator] = None):
        """Start writing ``state`` as checkpoint ``step`` with its config, data position and leaf
        checksums (computed now, from the state being saved), and the state of the input pipeline's
        iterator ``data`` (read now, before the loop draws its next batch); returns before the files
        are written (``wait``). Waits for the previous save first. Refuses a non-finite state before
        anything is written; a full disk raises ``DiskFullError``, here or from the next wait, after
        removing what the failed save had written."""
        bad = nonfinite_leaves(state)
        if bad:
            kept = self.latest_step()
            last = f"the last checkpoint (step {kept}) is kept" if kept is not None else "there is no earlier checkpoint"
            raise NonFiniteStateError(f"not saving step {step}: non-finite values in {_listing(bad)}; nothing was "
                                      f"written and {last}; lower optim.lr or check the data")
        meta = {"config": config, "data_position": data_position, "checksums": checksums(state)}
        self.wait()
        before = set(self.directory.iterdir())
        # Orbax's abandoned writes fail in its background threads, so the noise filter stays on until
        # ``wait`` knows how the write ended (and stays for good after a failure: ``failed_writes_silenced``).
        noise = failed_writes_silenced()
        noise.__enter__()
        logging.getLogger("absl").addFilter(BACKGROUND_FAILURE_RECORDS)
        try:
            items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
            if data is not None:
                items["data"] = grain.checkpoint.CheckpointSave(data)
            self.manager.save(step, args=ocp.args.Composite(**items))
        except Exception as e:
            logging.getLogger("absl").removeFilter(BACKGROUND_FAILURE_RECORDS)
            if (failure := clean_up_failed_save(self.manager, self.directory, step, before, e)) is e:
                raise
            raise failure from None
        self._pending = (step, before, noise)

    def wait(self):
        """Block until the save in progress (if any) is completely written, then prune to the newest
        ``keep`` and the milestones. A write that failed is raised here: ``DiskFullError`` for a full
        disk (the previous checkpoints intact), the orbax error otherwise; either way what it had
        written is removed first. Call on every host."""
        if self._pending is None:
            return
        step, before, noise = self._pending
        self._pending = None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            if (failure := clean_up_failed_save(self.manager, self.directory, step, before, e)) is e:
                raise
            raise failure from None
        finally:
            logging.getLogger("absl").removeFilter(BACKGROUND_FAILURE_RECORDS)
        noise.__exit__(None, None, None)
        self._prune()

    def _prune(self):
        """Delete all but the newest ``keep`` checkpoints and the ``keep_period`` milestones (called
        only after a completed save)."""
        for old in sorted(self.manager.all_steps())[:-self.keep]:
            if not (self.keep_period and old % self.keep_period == 0):
                self.manager.delete(old)

    # --- restoring ---

    def read_meta(self, step: Optional[int] = None) -> dict:
        self.wait()
        step = self.manager.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, template: Any, *, config: dict, step: Optional[int] = None, partial: bool = False):
        """(state, meta) from ``step`` (default latest), laid out like ``template`` and checked
        against the checksums saved with it. Refuses a checkpoint made for a different model,
        schedule or state layout (``ValueError``) and one that is unreadable or damaged
        (``CorruptCheckpointError``). ``partial``: ``template`` is a part of the saved state (say
        ``{"ema_params": …}`` to sample), and only that part is read."""
        self.wait()
        kept = self.manager.all_steps()
        if step is not None and step not in kept:
            raise ValueError(f"no checkpoint of step {step} in {self.directory}: it keeps steps "
                             f"{sorted(kept)}; pick one of them (a run keeps every multiple "
                             "of train.keep_period besides its newest train.keep_checkpoints)")
        step = self.manager.latest_step() if step is None else step
        path = self.directory / str(step)
        try:
            meta = self.read_meta(step)
        except Exception as e:
            raise CorruptCheckpointError(self._corrupt_message(
                step, f"its meta is unreadable ({first_line(e)})")) from e
        diffs = config_differences(meta["config"], config)
        if diffs:
            raise ValueError(f"checkpoint {path} was made with a different model or schedule:\n  "
                             + "\n  ".join(diffs) + "\nuse a new --workdir, or the checkpoint's config")
        saved = meta.get("checksums")
        if saved is not None:
            self._check_layout(path, saved, template, partial)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        if partial:
            restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract)
            args = ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True)
        else:
            args = ocp.args.StandardRestore(abstract)
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
        except Exception as e:
            raise CorruptCheckpointError(self._corrupt_message(
                step, f"its data is unreadable ({first_line(e)})")) from e
        if saved is None:
            _say(f"warning: checkpoint {path} was written without checksums and could not be verified")
        else:
            bad = [name for name, sums in checksums(state).items() if saved[name] != sums]
            if bad:
                raise CorruptCheckpointError(self._corrupt_message(
                    step, f"{_listing(bad)} do not match the checksums saved with it"))
        return state, meta

    def restore_data(self, iterator: grain.DatasetIterator, step: Optional[int] = None) -> grain.DatasetIterator:
        """``iterator`` (a fresh one of the run's ``pipeline.prefetched`` stream) set where checkpoint
        ``step`` (default latest) left the stream: the grain state this process saved there, when it
        fits ``iterator``; otherwise (a checkpoint written by another number of processes or grain
        workers, or without a data item) the stream's element ``data_position``, which is the same
        batch in any layout (``pipeline.step_batches``). Grain positions a stream by index only
        without worker processes or with one: with more, such a checkpoint is refused, naming both
        ways on."""
        self.wait()
        step = self.manager.latest_step() if step is None else step
        # The file name is grain's CheckpointHandler's own: one state per process of the layout that saved it.
        mine = self.directory / str(step) / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if mine.exists() and same_structure(json.loads(mine.read_text()), iterator.get_state()):
            return self.manager.restore(step, args=ocp.args.Composite(
                data=grain.checkpoint.CheckpointRestore(iterator)))["data"]
        position = int(self.read_meta(step)["data_position"])
        try:
            grain.experimental.set_next_index(iterator, position)
        except NotImplementedError as e:
            raise ValueError(f"checkpoint {self.directory / str(step)} holds the input pipeline's state of another "
                             f"layout (another number of processes or grain workers), and a stream made by several "
                             f"workers cannot be moved to its step {position}: resume with the layout it was "
                             "saved with, or with 0 or 1 workers (data.workers)") from e
        return iterator

    @staticmethod
    def _check_layout(path: Path, saved: dict, template: Any, partial: bool = False):
        """A checkpoint of a differently laid-out state (another optimizer, changed code) is a
        mismatch to report, not corruption to fall back from."""
        names = set(named_leaves(template))
        missing, extra = sorted(names - set(saved)), [] if partial else sorted(set(saved) - names)
        if missing or extra:
            raise ValueError(
                f"checkpoint {path} holds a differently laid-out state (absent from the checkpoint: "
                f"{_listing(missing) or 'none'}; not in this run's state: {_listing(extra) or 'none'}); "
                "use the optimizer and code it was made with, or a new --workdir")

    def _corrupt_message(self, step: int, problem: str) -> str:
        previous = self._previous_step(step)
        fix = (f"rerun the training command (experiments.train or train_classifier) with "
               f"--fall_back_to_good_checkpoint to move it to {self.corrupt_directory}/ and resume from step "
               f"{previous}") if previous is not None else \
            "there is no earlier checkpoint: move it aside or use a new --workdir to start over"
        return f"checkpoint {self.directory / str(step)} is corrupt: {problem}; {fix}"

    def restore_latest_good(self, template: Any, *, config: dict, fall_back: bool):
        """(state, meta) of the latest checkpoint. A corrupt one is re-raised unless ``fall_back``;
        with it, each corrupt checkpoint is moved (never deleted) to ``corrupt_directory`` and the
        next latest is tried, until one verifies."""
        last_error = None
        while (step := self.latest_step()) is not None:
            try:
                return self.restore(template, config=config, step=step)
            except CorruptCheckpointError as e:
                if not fall_back:
                    raise
                last_error = e
                self._move_aside(step)
        if last_error is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        raise CorruptCheckpointError(
            f"no checkpoint in {self.directory} verifies; the corrupt ones are in {self.corrupt_directory}/: "
            "use a new --workdir to start over") from last_error

    def _move_aside(self, step: int):
        """Move checkpoint ``step`` out of orbax's directory into ``corrupt_directory`` (a numbered
        suffix if that name is taken), so that the step can be saved again."""
        source = self.directory / str(step)
        target = self.corrupt_directory / str(step)
        suffix = 1
        while target.exists():
            target, suffix = self.corrupt_directory / f"{step}.{suffix}", suffix + 1

        def move():
            self.corrupt_directory.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
        parallel.on_primary(move, f"checkpoints: move aside {step}")
        self.manager.reload()
        _say(f"checkpoint {source} is corrupt: moved to {target}; trying the checkpoint before it")

    def close(self):
        """Wait for the save in progress (raising its failure, as ``wait``), then release orbax's threads."""
        try:
            self.wait()
        finally:
            self.manager.close()
