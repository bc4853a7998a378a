"""Datasets as random-access sources and a deterministic, resumable, per-host batch iterator.

Sources: the embedded MNIST subset ("mnist"), any ``.npz`` with ``image`` (uint8 [N, H, W, C])
and optional ``label`` given by path, TFDS datasets by name through ``tfds.data_source``
("tfds:cifar10", no TensorFlow needed), and 2-D toy sets ("toy:swissroll").
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from diffusion.data.toy import TOY

TOY_SIZE = 20_000


@dataclass(frozen=True)
class Split:
    """A split held in memory: ``images`` uint8 [N, H, W, C] (or float32 [N, D] for toy data, float32
    [N, h, w, c] for latents), ``labels`` int32 [N] (zeros where the source has none: ``labelled`` False)."""
    images: np.ndarray
    labels: np.ndarray
    labelled: bool = True

    def __len__(self):
        return len(self.images)


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


def _tfds_split(name: str, split: str, data_dir: Optional[str]):
    """(images, labels) of one TFDS split read through ``tfds.data_source`` (no TensorFlow)."""
    import tensorflow_datasets as tfds
    source = tfds.data_source(name, split=split, data_dir=data_dir or None)
    records = [source[i] for i in range(len(source))]
    images = np.stack([r["image"] for r in records]).astype(np.uint8)
    if "label" not in records[0]:      # e.g. downsampled_imagenet: images only
        return images, None
    return images, np.asarray([r["label"] for r in records], np.int32)


def _tfds_splits(name: str, data_dir: Optional[str]):
    try:
        train = _tfds_split(name, "train", data_dir)
    except Exception as e:
        raise RuntimeError(f"TFDS dataset {name!r} is not prepared{' in ' + data_dir if data_dir else ''}: "
                           f"prepare it where the data is reachable (tfds build {name}) or point "
                           f"data.tfds_data_dir at it ({type(e).__name__}: {e})") from e
    test = None
    for held_out in ("test", "validation"):   # ImageNet's held-out images are its validation split
        try:
            test = _tfds_split(name, held_out, data_dir)
            break
        except Exception:   # neither: hold out a fraction of train instead
            continue
    return train, test


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
            raise ValueError(f"data source {source!r} has no test split to hold out and data.holdout_fraction "
                             f"is 0: set --config.data.holdout_fraction (e.g. 0.1) to hold out part of train")
        test_images, test_labels = test
        held_out = (Split(test_images, np.zeros(len(test_images), np.int32), False) if test_labels is None
                    else Split(test_images, test_labels))
        return Split(images, labels, labelled), held_out
    order = np.random.default_rng(seed).permutation(len(images))   # the files are ordered by class
    n_hold = int(round(holdout_fraction * len(images)))
    hold, train = order[:n_hold], order[n_hold:]
    return Split(images[train], labels[train], labelled), Split(images[hold], labels[hold], labelled)


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


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] → float32 [−1, 1]; float (toy) data pass through."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 127.5 - 1.0
    return images.astype(np.float32)


def to_uint8(x) -> np.ndarray:
    """[−1, 1] → uint8 [0, 255] with rounding (the inverse of ``to_model_range``)."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def batch_indices(num_examples: int, global_batch: int, step: int, seed: int) -> np.ndarray:
    """Indices of the global batch for ``step``: epochs of seeded permutations, batches never
    straddle epochs. A pure function of ``step``, so a resumed run sees the same batches."""
    per_epoch = num_examples // global_batch
    if per_epoch == 0:
        raise ValueError(f"batch size {global_batch} is larger than the {num_examples} training examples")
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[pos * global_batch:(pos + 1) * global_batch]


def host_batch(split: Split, global_batch: int, step: int, seed: int) -> dict:
    """This host's share of the global batch for ``step`` ({'image', 'label'}); each host reads only its rows."""
    idx = batch_indices(len(split), global_batch, step, seed)
    n_proc, proc = jax.process_count(), jax.process_index()
    idx = np.array_split(idx, n_proc)[proc]
    return {"image": to_model_range(split.images[idx]), "label": split.labels[idx]}
