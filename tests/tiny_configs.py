"""The tiny settings every test that trains shares, so their compiled programs are reused, and the
poisoned data the NaN-guard tests train on."""
import grain
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.data import pipeline
from experiments import trainer


def shrink(c, steps=4):
    """A few steps of a tiny U-Net (or MLP) with a short sampler."""
    if c.model.kind == "unet":
        c.model.base_channels, c.model.channel_mult, c.model.num_res_blocks = 8, (1, 2), 1
        c.model.attention_resolutions, c.model.norm_groups = (c.data.image_size // 2,), 4
    else:
        c.model.hidden, c.model.depth = 16, 1
    c.train.batch_size, c.train.num_steps = 16, steps
    c.train.log_every, c.train.checkpoint_every, c.train.sample_every = 1, 2, 1000
    c.sample.num, c.sample.steps = 8, 2
    c.optim.warmup_steps = 2
    return c


def param_leaves(state) -> list:
    """A train state's parameters as host arrays, in tree order."""
    return [np.asarray(a) for a in jax.tree.leaves(state.params)]


def assert_same_params(a, b):
    """Two train states' parameters bitwise equal."""
    for x, y in zip(param_leaves(a), param_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def poison_batches_at(monkeypatch, step: int):
    """Make every training step see NaN images at ``step`` (the NaN guard's trigger): the step
    functions ``trainer.jit_step`` compiles multiply the batch's images by NaN when ``state.step``
    is ``step`` (uint8 images, as the pipeline delivers them, cannot hold a NaN)."""
    real = trainer.jit_step

    def poisoned(step_fn, state, mesh):
        def step_fn_poisoned(s, batch):
            return step_fn(s, dict(batch, image=batch["image"] * jnp.where(s.step == step, jnp.nan, 1.0)))
        return real(step_fn_poisoned, state, mesh)

    monkeypatch.setattr(trainer, "jit_step", poisoned)


def step_batch(split, global_batch: int, step: int, seed: int = 0) -> dict:
    """Step ``step``'s whole batch of ``split`` as the training pipeline makes it (one process; uint8 images)."""
    source = pipeline.ArraySource.from_split(split)
    return pipeline.step_batches(source, global_batch=global_batch, seed=seed, shard=grain.sharding.NoSharding())[step]
