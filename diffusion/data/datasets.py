"""Datasets as random-access sources: splits held in memory (``Split``), TFDS records read lazily
(``TfdsSource``, ``RecordSplit``); ``diffusion.data.pipeline`` streams their batches.

Sources: the embedded MNIST subset ("mnist"), any ``.npz`` with ``image`` (uint8 [N, H, W, C])
and optional ``label`` given by path, TFDS datasets by name through ``tfds.data_source``
("tfds:cifar10", no TensorFlow needed), and 2-D toy sets ("toy:swissroll").
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from diffusion.data.toy import TOY

TOY_SIZE = 20_000


@dataclass(frozen=True)
class Split:
    """A split held in memory: ``images`` uint8 [N, H, W, C] (or float32 [N, D] for toy data, float32
    [N, h, w, c] for latents), ``labels`` int32 [N] (zeros where the source has none: ``labelled`` False),
    and for a text-conditioned run each example's caption as token ids ``tokens`` int32 [N, L]."""
    images: np.ndarray
    labels: np.ndarray
    labelled: bool = True
    tokens: Optional[np.ndarray] = None

    def __len__(self):
        return len(self.images)

    def rows(self, start: int, stop: int) -> "Split":
        """Examples [start, stop) as a ``Split``."""
        return Split(self.images[start:stop], self.labels[start:stop], self.labelled,
                     None if self.tokens is None else self.tokens[start:stop])

    def head(self, n: int) -> "Split":
        """The first ``n`` examples (all of them when the split is shorter)."""
        return self.rows(0, n)


def embedded_mnist_path() -> Path:
    return Path(str(resources.files("diffusion.data") / "mnist_10k.npz"))


def _read_npz(path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset file at {path}: give an .npz with 'image' (uint8 N×H×W×C) and 'label'")
    with np.load(path) as f:
        if "image" not in f:
            raise ValueError(f"{path} has no 'image' array (it has {sorted(f.files)})")
        images = f["image"]
        labels = f["label"] if "label" in f else None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"{path}: 'image' must be uint8 N×H×W(×C), got {images.dtype} {images.shape}")
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
        raise ValueError(f"{path}: 'image' {images.shape} looks channels-first (N×C×H×W); store it "
                         "channels-last, N×H×W×C (np.transpose(image, (0, 2, 3, 1)))")
    if labels is not None and (not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),)):
        raise ValueError(f"{path}: 'label' must be integers, one per image ({len(images)}), got "
                         f"{labels.dtype} {labels.shape}")
    return (images[..., None] if images.ndim == 3 else images), None if labels is None else labels.astype(np.int32)


# Fixed crops (top, left, side) taken before resizing, by name (config field data.crop). DDIM's CelebA
# box (Song et al. 2021; their datasets/__init__.py: centre (cx, cy) = (89, 121)) is the 128×128
# square at rows 57–184 and columns 25–152 of the 218×178 aligned faces: the face, without the
# background a centre square of the whole image keeps.
CROPS = {"celeba_ddim": (57, 25, 128)}


def resize_images(images: np.ndarray, size: int, crop: str = "") -> np.ndarray:
    """Crop to a square — the named ``crop`` of ``CROPS``, or the centre square when "" — and resize
    (area for shrinking) to size×size, uint8."""
    from PIL import Image
    n, h, w, c = images.shape
    if crop:
        if crop not in CROPS:
            raise ValueError(f"unknown crop {crop!r}: use one of {sorted(CROPS)} or '' (the centre square)")
        top, left, s = CROPS[crop]
        if top + s > h or left + s > w:
            raise ValueError(f"crop {crop!r} takes the {s}×{s} box at row {top}, column {left}, which does not fit "
                             f"{h}×{w} images: use data.crop='' (the centre square) for these images")
    elif h == w == size:
        return images
    else:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
    out = np.empty((n, size, size, c), np.uint8)
    for i, img in enumerate(images[:, top:top + s, left:left + s]):
        pil = Image.fromarray(img[..., 0] if c == 1 else img)
        out[i] = np.asarray(pil.resize((size, size), Image.BOX)).reshape(size, size, c)
    return out


class TfdsSource:
    """The records of one TFDS split read lazily through ``tfds.data_source`` (ArrayRecord files, no
    TensorFlow): record ``i`` is read and decoded only when asked for, as ``{'image': uint8 [H, W, C],
    'label': int32}`` (label 0 where the set has none: ``labelled`` False), the image cropped and
    resized to ``image_size`` × ``image_size`` (``resize_images``) when ``image_size`` > 0. A set
    that is not prepared is refused when the source is made, saying how to prepare it."""

    def __init__(self, name: str, split: str, data_dir: Optional[str] = None, *, image_size: int = 0,
                 crop: str = ""):
        import tensorflow_datasets as tfds
        try:
            # download=False: a run reads prepared data; it never starts a download of its own.
            self.records = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
        except Exception as e:
            raise RuntimeError(f"TFDS dataset {name!r} (split {split!r}) is not prepared"
                               f"{' in ' + data_dir if data_dir else ''}: prepare it where the data is reachable "
                               f"(tfds build {name}) or point data.tfds_data_dir at it "
                               f"({type(e).__name__}: {e})") from e
        self.image_size, self.crop = image_size, crop
        self.labelled = len(self.records) > 0 and "label" in self.records[0]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        image = np.asarray(record["image"], np.uint8)
        image = image[..., None] if image.ndim == 2 else image
        if self.image_size:
            image = resize_images(image[None], self.image_size, self.crop)[0]
        return {"image": image, "label": np.int32(record["label"] if self.labelled else 0)}

    @property
    def num_classes(self) -> int:
        """The number of classes of the set's label feature, from its TFDS ``dataset_info`` (no record read)."""
        return self.records.dataset_info.features["label"].num_classes


class RecordSplit:
    """A split read lazily from a ``TfdsSource``: all its records, or the records at ``indices`` in
    that order (a seeded fraction held out of train, ``holdout_indices``). Example ``i`` is read only
    when asked for (``split[i]``, a record ``{'image', 'label'}`` as the pipeline streams it);
    ``rows`` and ``head`` read a range of examples into a ``Split``."""

    def __init__(self, records: TfdsSource, indices: Optional[np.ndarray] = None):
        self.records, self.indices = records, indices
        self.labelled = records.labelled

    def __len__(self) -> int:
        return len(self.records) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.records[i if self.indices is None else int(self.indices[i])]

    @property
    def num_classes(self) -> int:
        return self.records.num_classes

    def rows(self, start: int, stop: int) -> Split:
        """Examples [start, stop) read into a ``Split`` (only those records are read)."""
        records = [self[i] for i in range(start, min(stop, len(self)))]
        if not records:   # none: an empty split of the set's image shape (from its first record)
            return Split(np.zeros((0,) + self.records[0]["image"].shape, np.uint8), np.zeros(0, np.int32),
                         self.labelled)
        return Split(np.stack([r["image"] for r in records]), np.asarray([r["label"] for r in records], np.int32),
                     self.labelled)

    def head(self, n: int) -> Split:
        """The first ``n`` examples (all of them when the split is shorter), reading only those."""
        return self.rows(0, n)


def _tfds_split(name: str, split: str, data_dir: Optional[str]):
    """(images, labels or None) of one TFDS split, every record read into memory."""
    source = TfdsSource(name, split, data_dir)
    records = [source[i] for i in range(len(source))]
    images = np.stack([r["image"] for r in records])
    if not source.labelled:      # e.g. downsampled_imagenet: images only
        return images, None
    return images, np.asarray([r["label"] for r in records], np.int32)


HELDOUT_SPLITS = ("test", "validation")   # ImageNet's held-out images are its validation split


def _first_heldout_split(read):
    """``read(split)`` of the first of ``HELDOUT_SPLITS`` the set has, or None when it has neither."""
    for held_out in HELDOUT_SPLITS:
        try:
            return read(held_out)
        except Exception:   # not this one
            continue
    return None


def _tfds_splits(name: str, data_dir: Optional[str]):
    train = _tfds_split(name, "train", data_dir)
    return train, _first_heldout_split(lambda split: _tfds_split(name, split, data_dir))


def _no_heldout_split(source: str) -> ValueError:
    return ValueError(f"data source {source!r} has no test split to hold out and data.holdout_fraction "
                      f"is 0: set --config.data.holdout_fraction (e.g. 0.1) to hold out part of train")


def holdout_indices(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, train) indices of a seeded random fraction held out of ``n`` examples: the first
    round(``holdout_fraction`` · n) of ``np.random.default_rng(seed)``'s permutation, and the rest,
    in that order (the files are ordered by class)."""
    order = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(holdout_fraction * n))
    return order[:n_hold], order[n_hold:]


def load_splits(source: str, *, image_size: int, holdout_fraction: float, seed: int = 0,
                tfds_data_dir: str = "", crop: str = "") -> tuple[Split, Split]:
    """(train, held-out) splits for a source name. The held-out split is either the dataset's
    own test split, or its validation split where it has no test split (TFDS, when holdout_fraction
    is 0), or a seeded random fraction of the data."""
    test = None
    if source == "mnist":
        images, labels = _read_npz(embedded_mnist_path())
    elif source.startswith("toy:"):
        name = source.removeprefix("toy:")
        if name not in TOY:
            raise ValueError(f"unknown toy dataset {name!r}; choose one of {sorted(TOY)}")
        images, labels = TOY[name](TOY_SIZE, seed=seed), None
    elif source.startswith("tfds:"):
        (images, labels), test = _tfds_splits(source.removeprefix("tfds:"), tfds_data_dir)
    elif source.endswith(".npz"):
        images, labels = _read_npz(source)
    else:
        raise ValueError(f"unknown data source {source!r}: use 'mnist', a path to an .npz, "
                         f"'tfds:<name>' or 'toy:<{'|'.join(sorted(TOY))}>'")
    labelled = labels is not None
    labels = np.zeros(len(images), np.int32) if labels is None else labels
    if images.dtype == np.uint8:
        images = resize_images(images, image_size, crop)
        if test is not None:
            test = (resize_images(test[0], image_size, crop), test[1])
    if holdout_fraction == 0:
        if test is None:
            raise _no_heldout_split(source)
        test_images, test_labels = test
        held_out = (Split(test_images, np.zeros(len(test_images), np.int32), False) if test_labels is None
                    else Split(test_images, test_labels))
        return Split(images, labels, labelled), held_out
    hold, train = holdout_indices(len(images), holdout_fraction, seed)
    return Split(images[train], labels[train], labelled), Split(images[hold], labels[hold], labelled)


def load_training_splits(source: str, *, image_size: int, holdout_fraction: float, seed: int = 0,
                         tfds_data_dir: str = "", crop: str = "") -> tuple[Split | RecordSplit, Split | RecordSplit]:
    """``load_splits``' (train, held-out) splits, a TFDS source's read lazily: ``RecordSplit``s over
    its ``TfdsSource``s that give the same examples in the same order, each record read (and
    resized) only when asked for. Every other source's are ``load_splits``' own, in memory."""
    if not source.startswith("tfds:"):
        return load_splits(source, image_size=image_size, holdout_fraction=holdout_fraction, seed=seed,
                           tfds_data_dir=tfds_data_dir, crop=crop)
    name = source.removeprefix("tfds:")
    read = lambda split: TfdsSource(name, split, tfds_data_dir, image_size=image_size, crop=crop)
    train = read("train")
    if holdout_fraction == 0:
        test = _first_heldout_split(read)
        if test is None:
            raise _no_heldout_split(source)
        return RecordSplit(train), RecordSplit(test)
    hold, kept = holdout_indices(len(train), holdout_fraction, seed)
    return RecordSplit(train, kept), RecordSplit(train, hold)


def check_split(split: Split, *, channels: int, num_classes: Optional[int], source: str):
    """Refuse data a run would misread: images whose channel count is not ``data.channels``, and,
    when ``num_classes`` is given (the labels are used), data without labels or labels outside
    [0, ``num_classes``) (an out-of-range class embedding turns the first step's loss into NaN)."""
    if split.images.dtype == np.uint8 and split.images.shape[-1] != channels:
        raise ValueError(f"data {source!r} has {split.images.shape[-1]}-channel images {split.images.shape[1:]} "
                         f"but config field data.channels={channels}: set --config.data.channels="
                         f"{split.images.shape[-1]} or convert the images")
    if num_classes is None or not len(split):
        return
    if not split.labelled:
        raise ValueError(f"data {source!r} has no labels, but this run uses them (a class-conditional model or "
                         "a classifier): set --config.model.num_classes=0 or give data with a 'label' array")
    low, high = int(split.labels.min()), int(split.labels.max())
    if low < 0:
        raise ValueError(f"data {source!r} has negative labels (as low as {low}): labels must be class "
                         f"indices in [0, data.num_classes={num_classes})")
    if high >= num_classes:
        raise ValueError(f"data {source!r} has labels in [{low}, {high}], outside [0, data.num_classes="
                         f"{num_classes}): set --config.data.num_classes={high + 1} or fix the labels")


def check_record_split(split: RecordSplit, *, channels: int, num_classes: Optional[int], source: str):
    """``check_split`` for a split read lazily, without reading it: the channels and the labels of
    its first record, and, when ``num_classes`` is given, its set's own number of classes
    (``TfdsSource.num_classes``) against ``num_classes``."""
    check_split(split.head(1), channels=channels, num_classes=num_classes, source=source)
    if num_classes is not None and split.labelled and split.num_classes > num_classes:
        raise ValueError(f"data {source!r} has labels in [0, {split.num_classes - 1}] (its {split.num_classes} "
                         f"classes), outside [0, data.num_classes={num_classes}): set --config.data.num_classes="
                         f"{split.num_classes} or fix the labels")


# v / 127.5 − 1 in float32 for each uint8 value v. The host (``to_model_range``) and the training
# step on the device (``pipeline.model_inputs``) both look values up here, so they agree bit for bit
# (XLA computes x / 127.5 as x · (1 / 127.5), which differs in the last bit for most values).
UINT8_TO_MODEL_RANGE = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] → float32 [−1, 1] (``UINT8_TO_MODEL_RANGE``); float (toy, latent) data pass
    through as float32."""
    if images.dtype == np.uint8:
        return UINT8_TO_MODEL_RANGE[images]
    return images.astype(np.float32)


def to_uint8(x) -> np.ndarray:
    """[−1, 1] → uint8 [0, 255] with rounding (the inverse of ``to_model_range``)."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


# The batch key of each per-example field of a ``Split`` (singular, as a record's); a field not
# named here (``tokens``) keeps its own name.
BATCH_KEYS = {"images": "image", "labels": "label"}


def per_example_fields(split: Split) -> dict[str, np.ndarray]:
    """Every per-example array of ``split`` by its batch key ({'image', 'label'}, and 'tokens' where
    the split has them): what the input pipeline carries into each batch."""
    return {BATCH_KEYS.get(f.name, f.name): getattr(split, f.name) for f in fields(split)
            if isinstance(getattr(split, f.name), np.ndarray)}
