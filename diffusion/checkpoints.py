"""Orbax checkpoints of a ``TrainState`` with the run's config and data position beside it.

A checkpoint whose model, diffusion or data shape differs from the running config is refused,
naming the fields; a save happens only after the state was checked finite, so the last good
checkpoint is never replaced by a broken one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

# Config fields that change what the parameters mean: a resumed run must agree on them.
COMPATIBILITY_SECTIONS = ("model", "diffusion")
COMPATIBILITY_FIELDS = ("data.image_size", "data.channels")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        out.update(_flatten(v, name + ".") if isinstance(v, dict) else {name: v})
    return out


def compatibility_view(config: dict) -> dict:
    """The flattened fields that a checkpoint and a run must agree on (lists normalised from tuples)."""
    flat = _flatten(config)
    keep = {k: v for k, v in flat.items()
            if k.split(".")[0] in COMPATIBILITY_SECTIONS or k in COMPATIBILITY_FIELDS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in keep.items()}


def config_differences(saved: dict, current: dict) -> list[str]:
    a, b = compatibility_view(saved), compatibility_view(current)
    return [f"{k}: checkpoint {a.get(k, '<absent>')!r} vs config {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class Checkpointer:
    """``<workdir>/checkpoints`` managed by ``ocp.CheckpointManager``; call on every host."""

    def __init__(self, directory, *, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, *, config: dict, data_position: int):
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave({"config": config, "data_position": data_position})))
        self.manager.wait_until_finished()

    def read_meta(self, step: Optional[int] = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, template: Any, *, config: dict, step: Optional[int] = None):
        """(state, meta) from ``step`` (default latest), laid out like ``template``; refuses a
        checkpoint made for a different model or schedule, or one that cannot be read."""
        step = self.latest_step() if step is None else step
        path = self.directory / str(step)
        try:
            meta = self.read_meta(step)
        except Exception as e:
            raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); move it "
                               "aside to resume from an earlier one, or use a new workdir") from e
        diffs = config_differences(meta["config"], config)
        if diffs:
            raise ValueError(f"checkpoint {path} was made with a different model or schedule:\n  "
                             + "\n  ".join(diffs) + "\nuse a new --workdir, or the checkpoint's config")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as e:
            raise RuntimeError(f"checkpoint {path} does not restore into this run's state "
                               f"({type(e).__name__}: {e}); it is corrupt or from another version") from e
        return restored["state"], meta

    def close(self):
        self.manager.close()
