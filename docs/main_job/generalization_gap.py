"""Issue 26's overfitting check (docs/main_job/recipe.md, stage 9): a run's training loss on the first
examples of its training split against the same loss on as many held-out examples, with the same
timesteps and noise per row (``experiments.heldout.loss_batches``), at each kept checkpoint's EMA.

    PYTHONPATH=. python docs/main_job/generalization_gap.py runs/recipe/M_scaleshift 1000,3000,5000,7000

A held-out loss that pulls away above the training loss as the run goes on is memorisation, which data
augmentation (random shifts) would address; a gap that stays at the noise level says it would not.
"""
import sys

import jax
import numpy as np

from diffusion import xla_flags
from experiments import build, heldout, inference


def generalization_gap(workdir, steps=(None,), batches: int = 16) -> list[dict]:
    """{"train": mean loss, "heldout": mean loss, "examples": per split} of ``workdir``'s checkpoints
    ``steps`` (None: the latest), on ``batches`` batches of train.batch_size rows of each split; the
    data, their draws and the compiled loss are made once for every step."""
    run = inference.load_run(workdir, steps[0])
    B = run.config.train.batch_size
    splits = dict(zip(("train", "heldout"), build.training_data(run.config)))
    count = min(batches, *(len(s) // B for s in splits.values()))
    rows = {name: heldout.loss_batches(run.config, split, run.schedule.num_steps, count)
            for name, split in splits.items()}
    per_row = jax.jit(heldout.loss_fn(run.config, run.model, run.schedule))
    results = []
    for i, step in enumerate(steps):
        params = run.params if i == 0 else inference.load_run(workdir, step).params
        results.append({"examples": count * B} | {name: float(np.mean([per_row(params, b) for b in draws]))
                                                  for name, draws in rows.items()})
    return results


if __name__ == "__main__":
    xla_flags.use_xla_cpu_convolutions()
    workdir, steps = sys.argv[1], [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else [None]
    for step, r in zip(steps, generalization_gap(workdir, steps)):
        print(f"step {step or 'latest'}: training loss {r['train']:.5f}, held-out {r['heldout']:.5f} "
              f"({100 * (r['heldout'] / r['train'] - 1):+.1f}%) on {r['examples']} examples each", flush=True)
