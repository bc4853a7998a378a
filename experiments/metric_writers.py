"""A run's logs as ``clu.metric_writers``: ``<workdir>/metrics.jsonl`` and TensorBoard events in
``<workdir>/tensorboard``, written by process 0 only."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import numpy as np

if importlib.util.find_spec("tensorflow") is None:
    # clu.metric_writers' __init__ imports its own TensorBoard writer, built on TensorFlow, so without
    # TensorFlow (not a dependency here) nothing in the package imports (google/CommonLoopUtils#358,
    # open). That one module is stood in for; the interface and MultiWriter do not use it.
    _stand_in = types.ModuleType("clu.metric_writers.summary_writer")
    _stand_in.SummaryWriter = None
    sys.modules.setdefault(_stand_in.__name__, _stand_in)
from clu.metric_writers import MetricWriter, MultiWriter  # noqa: E402


def _row_step(line: str) -> Optional[int]:
    """The step of one metrics.jsonl row, or None for a line a crash left half-written."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None


def drop_rows_after(path: Path, step: int):
    """Rewrite the JSON-lines file ``path`` without rows past ``step`` (atomically, by rename): a run
    resumed at ``step`` replays the steps a crash lost, and their rows must not appear twice; a
    half-written last line (killed mid-write, or a full disk) is dropped too."""
    if not path.exists():
        return
    rows = path.read_text().splitlines(keepends=True)
    kept = [r for r in rows if r.endswith("\n") and (row := _row_step(r)) is not None and row <= step]
    if len(kept) != len(rows):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)


class BaseWriter(MetricWriter):
    """clu's ``MetricWriter`` with every write ignored: a subclass defines the ones its log keeps."""

    def write_summaries(self, step: int, values: Mapping[str, Any], metadata: Optional[Mapping[str, Any]] = None):
        pass

    def write_images(self, step: int, images: Mapping[str, Any]):
        pass

    def write_videos(self, step: int, videos: Mapping[str, Any]):
        pass

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
        pass

    def write_texts(self, step: int, texts: Mapping[str, str]):
        pass

    def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets=None):
        pass

    def write_hparams(self, hparams: Mapping[str, Any]):
        pass


class JsonlWriter(BaseWriter):
    """One JSON line ``{"step": n, name: float, …}`` per ``write_scalars`` call, flushed at once, so a
    crash loses at most the line being written. Opened at ``start``, it first drops the rows after it."""

    def __init__(self, path: Path, start: int = 0):
        drop_rows_after(path, start)
        self._file = open(path, "a")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        self._file.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._file.flush()

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


class TensorBoardWriter(BaseWriter):
    """Scalars and images as TensorBoard events through tensorboardX (clu's own writer needs
    TensorFlow); opened at ``start`` > 0, events after it are purged, as their steps are replayed."""

    def __init__(self, logdir: Path, start: int = 0):
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(logdir), purge_step=start + 1 if start else None)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        for name, value in scalars.items():
            self._tb.add_scalar(name, float(value), step)

    def write_images(self, step: int, images: Mapping[str, Any]):
        """images: uint8 (or float in [0, 1]) [H, W, C] or [N, H, W, C]."""
        for name, value in images.items():
            value = np.asarray(value)
            if value.ndim == 4:
                self._tb.add_images(name, value, step, dataformats="NHWC")
            else:
                self._tb.add_image(name, value, step, dataformats="HWC")

    def flush(self):
        self._tb.flush()

    def close(self):
        self._tb.close()


def create(workdir: Path, start: int = 0) -> MetricWriter:
    """``MultiWriter`` of ``metrics.jsonl`` and ``tensorboard/`` in ``workdir`` on process 0; on the
    others one of no writers, which does nothing."""
    if jax.process_index() != 0:
        return MultiWriter([])
    return MultiWriter([JsonlWriter(workdir / "metrics.jsonl", start), TensorBoardWriter(workdir / "tensorboard", start)])
