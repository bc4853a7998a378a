"""The input pipeline's host throughput against the train step's consumption: images/s that
``diffusion.data.pipeline`` delivers (shuffled, batched, prefetched; uint8) with 0, 1 and 2 grain
worker processes, from arrays in memory (the embedded 10k MNIST, ../shared/data's Fashion-MNIST)
and from TFDS records read lazily (``tfds.testing.mock_data``'s CIFAR-10 records, and a prepared
set when there is one), beside the images/s the default MNIST train step consumes
(``benchmarks.main_job``: configs/mnist.py's U-Net at its batch).

python -m benchmarks.input_pipeline [--seconds 2] [--workers 0,1,2] [--tfds cifar10]

Rates are medians of three windows after warm-up (the first batch, which starts the workers).
Mock TFDS records are generated in this process, so they are read without workers only. Run on an
otherwise idle machine: rows measured side by side in one run compare.
"""
import argparse
import sys
from pathlib import Path

import grain
from absl import flags

from benchmarks.main_job import measure
from benchmarks.run import median_rate
from configs import mnist
from diffusion import xla_flags
from diffusion.data import datasets, pipeline

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pipeline_rate(source, batch: int, workers: int, threads: int, seconds: float, random_flip: bool = False) -> float:
    """Images/s of the pipeline's batches of ``source`` drawn on the host, one process."""
    stream = iter(pipeline.prefetched(
        pipeline.step_batches(source, global_batch=batch, seed=0, shard=grain.sharding.NoSharding(),
                              random_flip=random_flip), workers=workers, threads=threads))
    try:
        return median_rate(lambda: next(stream), batch, windows=3, min_seconds=seconds)
    finally:
        stream.close()


def sources(tfds_name: str, mnist_source):
    """(name, source, whether workers can read it) of every source measured."""
    yield "MNIST 10k, in memory (28×28×1)", mnist_source, True
    if (SHARED / "fashion_mnist_70k.npz").exists():
        split, _ = datasets.load_splits(str(SHARED / "fashion_mnist_70k.npz"), image_size=28, holdout_fraction=1 / 7)
        yield "Fashion-MNIST 60k, in memory (28×28×1)", pipeline.ArraySource.from_split(split), True
    import tensorflow_datasets as tfds
    try:
        prepared = datasets.TfdsSource(tfds_name, "train", image_size=32)
    except RuntimeError:
        print(f"(tfds:{tfds_name} is not prepared here: no row for it)", file=sys.stderr)
    else:
        yield f"tfds:{tfds_name} train, prepared, read lazily, resized to 32×32", prepared, True
    with tfds.testing.mock_data(num_examples=2048):
        source = datasets.TfdsSource("cifar10", "train", image_size=32)
        yield "tfds:cifar10 mock records, lazy (32×32×3)", source, False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="Seconds per timing window.")
    parser.add_argument("--workers", default="0,1,2", help="Grain worker processes, comma-separated.")
    config = mnist.get_config()
    parser.add_argument("--threads", type=int, default=config.data.read_threads,
                        help="Reading threads (data.read_threads).")
    parser.add_argument("--tfds", default="cifar10", help="A TFDS set measured when it is prepared.")
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()          # grain's worker processes read absl flags
    xla_flags.use_xla_cpu_convolutions()  # as the entry points do, before the backend starts
    batch = config.train.batch_size
    mnist_source = pipeline.ArraySource.from_split(datasets.load_splits("mnist", image_size=28, holdout_fraction=0.1)[0])
    workers = [int(w) for w in args.workers.split(",")]
    step = measure("w16", batch, args.seconds)
    print(f"| source (batch {batch}, {args.threads} reading threads) | "
          + " | ".join(f"{w} worker{'' if w == 1 else 's'}: images/s" for w in workers) + " |")
    print("| --- |" + " --- |" * len(workers))
    for name, source, workers_can_read in sources(args.tfds, mnist_source):
        rates = [f"{pipeline_rate(source, batch, w, args.threads, args.seconds):,.0f}" if workers_can_read or w == 0
                 else "—" for w in workers]
        print(f"| {name} | " + " | ".join(rates) + " |", flush=True)
    flipped = pipeline_rate(mnist_source, batch, 0, args.threads, args.seconds, random_flip=True)
    print(f"| MNIST 10k, in memory, data.random_flip | {flipped:,.0f} |" + " |" * (len(workers) - 1))
    print(f"\ntrain step (configs/mnist.py U-Net, batch {batch}, benchmarks.main_job): "
          f"{step['images_s']:,.0f} images/s")


if __name__ == "__main__":
    main()
