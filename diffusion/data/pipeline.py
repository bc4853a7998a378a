"""The streaming input pipeline (grain): records read lazily from a random-access source, shuffled
with a seed, each process reading only its rows of every global batch, augmented in uint8 on the
host and prefetched; images become floats on the device, inside the jitted step (``model_inputs``).

``step_batches`` is a ``grain.MapDataset`` whose element ``s`` is this process's share of step
``s``'s global batch: epochs of seeded permutations of the records (grain's ``index_shuffle``, a
fresh one each epoch), cut into whole global batches (the remainder of an epoch is skipped, so
batches never straddle epochs), each global batch split into ``shard_count`` contiguous blocks of
rows of which shard ``shard_index`` reads only its own. A global batch is the same rows in the
same order whatever the number of processes, and the stream is a function of the step, so a
checkpoint resumes in another process layout at its step (``Checkpointer.restore_data``).

``prefetched`` turns it into the ``grain.IterDataset`` a training loop iterates: batches read
ahead by threads and, with ``workers`` > 0, made in grain worker processes; the iterator's state is
saved in the orbax checkpoint beside the train state (``Checkpointer.save(..., data=iterator)``).
"""
from __future__ import annotations

import grain
import jax.numpy as jnp
import numpy as np

from diffusion.data import datasets


class ArraySource:
    """A grain random-access source over per-example arrays held in memory: record ``i`` is
    ``{name: array[i]}`` (``from_split``: every per-example field of a ``datasets.Split``)."""

    def __init__(self, fields: dict[str, np.ndarray]):
        sizes = {name: len(a) for name, a in fields.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"per-example arrays of different lengths: {sizes}")
        self.fields = fields

    @classmethod
    def from_split(cls, split: datasets.Split) -> "ArraySource":
        return cls(datasets.per_example_fields(split))

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def __getitem__(self, i: int) -> dict:
        return {name: a[i] for name, a in self.fields.items()}


def source_of(split: datasets.Split | datasets.RecordSplit):
    """The random-access source the pipeline reads ``split``'s records from: an in-memory
    ``datasets.Split``'s arrays (``ArraySource.from_split``), or a ``datasets.RecordSplit`` itself,
    read record by record."""
    return ArraySource.from_split(split) if isinstance(split, datasets.Split) else split


def flip_horizontally(record: dict, rng: np.random.Generator) -> dict:
    """The record's image [H, W, C] mirrored left–right with probability ½ (DDPM's CIFAR-10
    augmentation, Ho et al. 2020 Appendix B)."""
    if rng.random() < 0.5:
        return dict(record, image=record["image"][:, ::-1])
    return record


def check_batch(num_examples: int, global_batch: int, shard_count: int, what: str = "global batch"):
    """Refuse a global batch that does not split evenly over the shards (processes) or that is
    larger than the data, naming ``what`` (the config field)."""
    if global_batch % shard_count:
        raise ValueError(f"{what}={global_batch} does not divide over the {shard_count} processes: use a "
                         f"multiple of {shard_count}")
    if global_batch > num_examples:
        raise ValueError(f"{what}={global_batch} is larger than the {num_examples} training examples: use at "
                         f"most {num_examples}")


def step_batches(source, *, global_batch: int, seed: int, shard: grain.sharding.ShardOptions,
                 random_flip: bool = False, what: str = "global batch") -> grain.MapDataset:
    """Element ``s``: shard ``shard.shard_index``'s rows of step ``s``'s global batch, a dict of
    per-example arrays stacked [global_batch / shard_count, ...] (uint8 images stay uint8), read
    lazily from ``source`` (``len`` and ``source[i] -> dict``); infinite. ``random_flip``: each
    record's image mirrored with probability ½, drawn from (``seed``, its position in the stream).
    Checks the batch first (``check_batch``)."""
    n, shards = len(source), shard.shard_count
    check_batch(n, global_batch, shards, what)
    per_epoch = n // global_batch
    records = grain.MapDataset.source(source).shuffle(seed=seed)
    if random_flip:
        records = records.random_map(flip_horizontally, seed=seed)
    blocks = records.batch(global_batch // shards, drop_remainder=True)   # block j: rows of global batch j // shards
    return blocks[shard.shard_index:per_epoch * shards:shards].repeat()


def prefetched(batches: grain.MapDataset, *, workers: int = 0, threads: int = 2) -> grain.IterDataset:
    """``batches`` read ahead, in order, by ``threads`` threads into a buffer of ``2 · threads``
    batches, made in ``workers`` grain worker processes when > 0 (each making every ``workers``-th
    batch; needs parsed absl flags, as an entry point has)."""
    stream = batches.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
    return stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)) if workers else stream


def model_inputs(batch: dict) -> dict:
    """A batch as the model reads it, made on the device inside the jitted step: uint8 images →
    float32 [−1, 1], the values of ``datasets.UINT8_TO_MODEL_RANGE`` (so equal bit for bit to the
    host's ``datasets.to_model_range``); float data (latents, toy points) and the other fields as
    they are."""
    image = batch["image"]
    if image.dtype == jnp.uint8:
        image = jnp.asarray(datasets.UINT8_TO_MODEL_RANGE)[image]
    return dict(batch, image=image)
