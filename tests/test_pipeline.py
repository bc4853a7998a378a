"""The streaming input pipeline: grain over in-memory arrays and lazily read TFDS records,
sharded by process, shuffled with a seed, flipped in uint8 on the host, floats made on the device,
and its iterator state checkpointed with the train state so a resume continues the exact stream."""
import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from diffusion.checkpoints import Checkpointer
from diffusion.data import datasets, pipeline
from experiments import loop
from tiny_configs import shrink

N = 20


def numbered(n=N, size=2) -> datasets.Split:
    """Example i: a size×size image whose column 0 is i and other columns 100 + i (so a flip
    shows), label i, tokens [i, 2i, 3i]."""
    images = np.zeros((n, size, size, 1), np.uint8)
    images[:, :, 0, 0], images[:, :, 1:, 0] = np.arange(n)[:, None], 100 + np.arange(n)[:, None, None]
    return datasets.Split(images, np.arange(n, dtype=np.int32),
                          tokens=np.arange(n, dtype=np.int32)[:, None] * np.arange(1, 4, dtype=np.int32))


def batches(source, global_batch, steps, *, seed=0, shard=(0, 1), **kw):
    ds = pipeline.step_batches(source, global_batch=global_batch, seed=seed,
                               shard=grain.sharding.ShardOptions(*shard), **kw)
    return [ds[s] for s in range(steps)]


def test_two_process_shards_are_disjoint_and_make_the_one_process_batch():
    """Process p of 2 reads rows [p·B/2, (p+1)·B/2) of every global batch: the two shards share no
    example, and, concatenated in process order, are the one-process batch row for row (what
    ``jax.make_array_from_process_local_data`` assembles), every field alike."""
    source = pipeline.ArraySource.from_split(numbered())
    whole = batches(source, 8, 6)
    parts = [batches(source, 8, 6, shard=(p, 2)) for p in range(2)]
    for s in range(6):
        first, second = parts[0][s], parts[1][s]
        assert len(first["label"]) == len(second["label"]) == 4
        assert not set(first["label"]) & set(second["label"])
        for key in ("image", "label", "tokens"):
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[s][key])


def test_every_example_once_per_epoch_and_the_seed_decides_the_order():
    """N = 20 at batch 8: 2 batches an epoch (4 examples skipped, never a batch across epochs), 16
    distinct examples in each, a new order each epoch; at N = 16 each epoch is every example once.
    The same seed gives the same batches, another seed others."""
    source = pipeline.ArraySource.from_split(numbered())
    stream = batches(source, 8, 6)
    epochs = [np.concatenate([b["label"] for b in stream[e * 2:(e + 1) * 2]]) for e in range(3)]
    for labels in epochs:
        assert len(set(labels)) == 16 and set(labels) <= set(range(N))
    assert not np.array_equal(epochs[0], epochs[1])
    whole = batches(pipeline.ArraySource.from_split(numbered(16)), 8, 6)    # 16 = 2 batches: nothing skipped
    for e in range(3):
        assert sorted(np.concatenate([b["label"] for b in whole[e * 2:(e + 1) * 2]])) == list(range(16))
    again, other = batches(source, 8, 6), batches(source, 8, 6, seed=1)
    assert all(np.array_equal(a["label"], b["label"]) for a, b in zip(stream, again))
    assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(stream, other))
    for b in stream:   # each record whole: image, label and tokens of the same example
        np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["label"])
        np.testing.assert_array_equal(b["tokens"], b["label"][:, None] * np.arange(1, 4))
        assert b["image"].dtype == np.uint8 and b["tokens"].dtype == np.int32


def test_random_flip_mirrors_about_half_the_records_and_nothing_else():
    """Each flipped image is its record's image mirrored left–right; over 5 epochs of 16 about half
    are (80 draws of p = ½: within 4 s.e. ≈ 18); the stream with flips is itself seeded."""
    source = pipeline.ArraySource.from_split(numbered())
    plain, flipped = batches(source, 8, 10), batches(source, 8, 10, random_flip=True)
    count = 0
    for a, b in zip(plain, flipped):
        np.testing.assert_array_equal(a["label"], b["label"])
        mirrored = b["image"][:, :, 0, 0] != a["image"][:, :, 0, 0]
        np.testing.assert_array_equal(b["image"][mirrored[:, 0]], a["image"][mirrored[:, 0]][:, :, ::-1])
        np.testing.assert_array_equal(b["image"][~mirrored[:, 0]], a["image"][~mirrored[:, 0]])
        count += int(mirrored[:, 0].sum())
    assert abs(count - 40) <= 18, count
    again = batches(source, 8, 10, random_flip=True)
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(flipped, again))


def test_the_device_conversion_is_to_model_range():
    """uint8 in; inside jit the images become (x / 127.5 − 1) in float32, equal to
    ``datasets.to_model_range`` on the host and within float32 rounding of the float64 value; 0 and
    255 land on −1 and 1 exactly; float latents and the other fields pass unchanged."""
    images = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    out = jax.jit(pipeline.model_inputs)({"image": images, "label": np.arange(4, dtype=np.int32)})
    assert out["image"].dtype == jnp.float32 and out["label"].dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out["image"]), datasets.to_model_range(images))
    np.testing.assert_allclose(np.asarray(out["image"]), images.astype(np.float64) / 127.5 - 1, atol=1e-7)
    assert float(out["image"].min()) == -1.0 and float(out["image"].max()) == 1.0
    latents = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(pipeline.model_inputs)({"image": latents})["image"]), latents)


def test_bad_batches_are_refused_before_any_read():
    source = pipeline.ArraySource.from_split(numbered())
    with pytest.raises(ValueError,
                       match="train.batch_size=9 does not divide over the 2 processes: use a multiple of 2"):
        batches(source, 9, 1, shard=(0, 2), what="train.batch_size")
    with pytest.raises(ValueError, match="global batch=24 is larger than the 20 training examples: use at most 20"):
        batches(source, 24, 1)


def test_a_tfds_set_is_read_lazily_record_by_record():
    """Through ``tfds.testing.mock_data``: a batch reads only its own records (a process of 2 reads
    2 records for its half of a batch of 4, none of the other 14 a step never asks for), decoded
    to the run's image size, equal to the same records read one by one."""
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=16):
        source = datasets.TfdsSource("cifar10", "train", image_size=16)
        real = source.records
        reads = _count_reads(source)
        [first] = batches(source, 4, 1, shard=(1, 2))
        assert len(reads) == 2 and len(source) == 16
        assert first["image"].shape == (2, 16, 16, 3) and first["image"].dtype == np.uint8
        for row, i in enumerate(reads):
            record = real[i]
            np.testing.assert_array_equal(first["image"][row], datasets.resize_images(record["image"][None], 16)[0])
            assert first["label"][row] == record["label"]


def test_an_unprepared_tfds_set_is_refused_saying_how_to_prepare_it(tmp_path):
    with pytest.raises(RuntimeError,
                       match=f"'cifar10' \\(split 'train'\\) is not prepared in {tmp_path}.*tfds build cifar10"):
        datasets.TfdsSource("cifar10", "train", str(tmp_path))


def test_the_iterator_state_in_the_checkpoint_continues_the_stream(tmp_path):
    """Saved mid-epoch (step 3 of 2-step epochs) with the train state while the loop draws on, the
    iterator restored from the orbax checkpoint gives the batches the uninterrupted one did; a
    checkpoint written by another number of processes (no state for this one) resumes at its
    data position, which is the same batch."""
    stream = pipeline.prefetched(pipeline.step_batches(pipeline.ArraySource.from_split(numbered()), global_batch=8,
                                                       seed=0, shard=grain.sharding.NoSharding()))
    ckpt = Checkpointer(tmp_path)
    it = iter(stream)
    for _ in range(3):
        next(it)
    ckpt.save(3, {"w": jnp.ones(2)}, config={}, data_position=3, data=it)
    after = [next(it)["label"] for _ in range(4)]     # the loop goes on while the save is written
    ckpt.wait()
    assert json.loads((tmp_path / "3" / "data" / "process_0-of-1.json").read_text()) == {"next_index": 3}
    for layout in ("this", "another"):
        if layout == "another":
            (tmp_path / "3" / "data" / "process_0-of-1.json").rename(tmp_path / "3" / "data" / "process_1-of-2.json")
        restored = ckpt.restore_data(iter(stream))
        for expected in after:
            np.testing.assert_array_equal(next(restored)["label"], expected)
        restored.close()
    ckpt.close()


def test_a_stream_grain_cannot_move_by_index_is_refused_with_the_ways_on(tmp_path):
    """A state saved by one stream does not fit an iterator that interleaves two (as grain's 2
    workers do), and grain cannot move such an iterator to a step: the resume is refused, naming
    the layout and data.workers."""
    source = pipeline.ArraySource.from_split(numbered())
    one = pipeline.prefetched(pipeline.step_batches(source, global_batch=8, seed=0, shard=grain.sharding.NoSharding()))
    ckpt = Checkpointer(tmp_path)
    it = iter(one)
    next(it)
    ckpt.save(1, {"w": jnp.ones(2)}, config={}, data_position=1, data=it)
    two = grain.experimental.InterleaveIterDataset([one, one], cycle_length=2)
    with pytest.raises(ValueError, match="another layout .* cannot be moved to its step 1: resume with the layout it "
                                         "was saved with, or with 0 or 1 workers \\(data.workers\\)"):
        ckpt.restore_data(iter(two))
    ckpt.close()


def test_a_run_resumed_mid_epoch_continues_the_exact_stream(tmp_path):
    """``run_loop`` on a step that records each batch's labels in its state: stopped after step 3
    (checkpoint 3, mid-way through the second 2-step epoch) and resumed to 6, it saw the batches the
    uninterrupted run did, restored from the checkpoint's iterator state."""
    def run(workdir, steps):
        c = shrink(base.get_config())
        c.train.num_steps, c.train.checkpoint_every, c.train.batch_size = steps, 3, 8
        workdir, mesh = loop.prepare_run(c, workdir)
        init = lambda key: {"step": jnp.zeros((), jnp.int32), "labels": jnp.full((6, 8), -1, jnp.int32)}
        state, start, ckpt = loop.restore_or_init(c, workdir, init, mesh)

        def record(s, batch):
            seen = {"step": s["step"] + 1, "labels": s["labels"].at[s["step"]].set(batch["label"])}
            return seen, {"loss": jnp.zeros(()), "update_finite": jnp.asarray(True)}
        return loop.run_loop(c, workdir, state, start, ckpt, loop.jit_step(record, state, mesh),
                                loop.training_batches(c, numbered()), mesh)

    straight = np.asarray(run(tmp_path / "straight", 6)["labels"])
    run(tmp_path / "resumed", 3)
    assert json.loads((tmp_path / "resumed" / "checkpoints" / "3" / "data" / "process_0-of-1.json").read_text()) \
        == {"next_index": 3}
    resumed = np.asarray(run(tmp_path / "resumed", 6)["labels"])
    np.testing.assert_array_equal(resumed, straight)
    source = pipeline.ArraySource.from_split(numbered())
    np.testing.assert_array_equal(straight, np.stack([b["label"] for b in batches(source, 8, 6)]))


def _count_reads(source: datasets.TfdsSource) -> list:
    """The indices of ``source``'s records read from now on, in order (its records wrapped)."""
    reads, real = [], source.records

    class Counting:
        dataset_info = getattr(real, "dataset_info", None)

        def __len__(self):
            return len(real)

        def __getitem__(self, i):
            reads.append(int(i))
            return real[i]
    source.records = Counting()
    return reads


class TrainOnly(datasets.TfdsSource):
    """A TFDS set with a train split only (no test or validation split)."""

    def __init__(self, name, split, *args, **kw):
        if split != "train":
            raise ValueError(f"Unknown split {split!r}")
        super().__init__(name, split, *args, **kw)


@pytest.mark.parametrize("holdout_fraction", [0.0, 0.25])
def test_a_lazily_read_tfds_split_streams_the_batches_of_the_whole_read_one(monkeypatch, holdout_fraction):
    """``load_training_splits`` reads no record up front, and its splits are ``load_splits``' bit for
    bit: the test split held out (fraction 0), or, for a set without one, the same seeded quarter of
    train (its records in the same permuted order); the training stream over each is the same."""
    import tensorflow_datasets as tfds
    if holdout_fraction:
        monkeypatch.setattr(datasets, "TfdsSource", TrainOnly)
    kw = dict(image_size=16, holdout_fraction=holdout_fraction, seed=3)
    with tfds.testing.mock_data(num_examples=16):
        whole = datasets.load_splits("tfds:cifar10", **kw)
        lazy = datasets.load_training_splits("tfds:cifar10", **kw)
        assert all(isinstance(s, datasets.RecordSplit) for s in lazy)
        assert [len(s) for s in lazy] == [len(s) for s in whole] == ([16, 16] if not holdout_fraction else [12, 4])
        for w, l in zip(whole, lazy):
            read = l.head(len(l))
            np.testing.assert_array_equal(read.images, w.images)
            np.testing.assert_array_equal(read.labels, w.labels)
            assert read.labelled == w.labelled and read.images.dtype == np.uint8
        reads = _count_reads(lazy[0].records)
        streamed = batches(pipeline.source_of(lazy[0]), 4, 5, seed=1, random_flip=True)
        assert len(reads) == 5 * 4
    for a, b in zip(batches(pipeline.source_of(whole[0]), 4, 5, seed=1, random_flip=True), streamed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_head_reads_only_its_records_and_the_class_count_is_checked_unread():
    """``head(n)`` of a lazily read split (here a seeded fraction of train) reads its first n records
    and no other; a class-conditional run is checked against the set's own number of classes
    (``dataset_info``), without reading its labels."""
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=16):
        train, _ = datasets.load_training_splits("tfds:cifar10", image_size=8, holdout_fraction=0.25)
        reads = _count_reads(train.records)
        first = train.head(3)
        assert reads == [int(i) for i in train.indices[:3]]
        assert first.images.shape == (3, 8, 8, 3) and len(first.head(2)) == 2
        del reads[:]
        datasets.check_record_split(train, channels=3, num_classes=10, source="tfds:cifar10")
        assert len(reads) == 1
        with pytest.raises(ValueError, match=r"labels in \[0, 9\] \(its 10 classes\), outside \[0, "
                                             r"data.num_classes=5\): set --config.data.num_classes=10"):
            datasets.check_record_split(train, channels=3, num_classes=5, source="tfds:cifar10")
        with pytest.raises(ValueError, match="3-channel images"):
            datasets.check_record_split(train, channels=1, num_classes=None, source="tfds:cifar10")


@pytest.mark.system
def test_a_tfds_run_trains_and_evaluates_without_reading_a_split_whole(tmp_path, monkeypatch):
    """``train_and_evaluate`` on a TFDS set reads its records lazily (``build.training_data``): with
    the whole-split read made to fail, a run trains, measures the held-out loss and bound from the
    test split's first records and writes its checkpoint."""
    import tensorflow_datasets as tfds
    from configs import cifar10_ddpm

    def refuse(*args):
        raise AssertionError("a TFDS split was read whole")
    monkeypatch.setattr(datasets, "_tfds_split", refuse)
    c = cifar10_ddpm.get_config()
    c.data.image_size, c.diffusion.num_steps = 16, 100
    c = shrink(c, steps=2)
    c.train.eval_every = 2
    with tfds.testing.mock_data(num_examples=16):
        state = loop.train_and_evaluate(c, tmp_path)
    assert int(state.step) == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/loss" in row and "eval/bpd" in row for row in rows)


def test_reference_statistics_measured_in_chunks_equal_the_whole_split(tmp_path):
    """``scoring.reference_stats`` and ``split_features`` read a split a chunk at a time
    (``split.rows``, 7 of 20 examples here): the running sums of ``metrics.FeatureStats`` give the
    mean and covariance of the whole split's features, and the class probabilities are the whole
    split's, in order."""
    from diffusion import metrics
    from experiments import scoring
    projection = np.random.default_rng(0).normal(size=(2 * 2, 5))

    def features(images):   # a deterministic per-example feature network: [N, 5] features, [N, 2] probabilities
        feats = images.reshape(len(images), -1).astype(np.float64) @ projection
        probs = np.stack([images[:, 0, 0, 0], images[:, 0, 1, 0]], -1) / 255.0
        return feats, probs
    split = numbered()
    whole_feats, whole_probs = features(split.images)
    whole = metrics.FeatureStats(5).update(whole_feats)
    config = base.get_config()
    stats, probs = scoring.reference_stats(config, "toy", features, "train", split, tmp_path, chunk=7)
    assert stats.count == N
    np.testing.assert_allclose(stats.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(stats.cov, whole.cov, rtol=1e-10)
    np.testing.assert_array_equal(probs, whole_probs)
    cached, cached_probs = scoring.reference_stats(config, "toy", None, "train", split, tmp_path)   # read back
    np.testing.assert_array_equal(cached.outer, stats.outer)
    np.testing.assert_array_equal(cached_probs, probs)
    feats, probs = scoring.split_features(features, split, chunk=7)
    np.testing.assert_array_equal(feats, whole_feats)
    np.testing.assert_array_equal(probs, whole_probs)


@pytest.mark.system
def test_a_tfds_run_evaluates_without_reading_a_split_whole(tmp_path, monkeypatch):
    """``results.evaluate_run`` on a TFDS run reads the set lazily (``build.training_data``): with
    the whole-split read made to fail, a run on a mock MNIST (28×28×1, so the project's classifier
    gives the features) is measured — the reference statistics of its 16 training images and the
    held-out row of its 16 test images a chunk at a time, the NLL from the first 4 test images."""
    import tensorflow_datasets as tfds
    from experiments import results

    def refuse(*args):
        raise AssertionError("a TFDS split was read whole")
    monkeypatch.setattr(datasets, "_tfds_split", refuse)
    c = base.get_config()
    c.data.source, c.data.holdout_fraction, c.diffusion.num_steps = "tfds:mnist", 0.0, 100
    c = shrink(c, steps=2)
    with tfds.testing.mock_data(num_examples=16):
        loop.train_and_evaluate(c, tmp_path)
        rows, nlls = results.evaluate_run(tmp_path, [("ddim", 2, 0.0)], results.Draws(num=16, batch=16),
                                          results.Measures(features="classifier", nll_examples=4))
    assert rows[0]["name"] == "held-out split (16 real images)" and rows[0]["num"] == 16
    assert np.isfinite(rows[0]["fid"]) and np.isfinite(rows[1]["fid"]) and rows[1]["num"] == 16
    assert nlls["vlb"]["num"] == 4 and np.isfinite(nlls["vlb"]["bits_per_dim"])
    (stats_file,) = (tmp_path / "eval" / "reference_stats").glob("*_train_classifier_mnist.npz")
    with np.load(stats_file) as f:
        assert int(f["count"]) == 16
