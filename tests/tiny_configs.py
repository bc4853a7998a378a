"""The tiny settings every test that trains shares, so their compiled programs are reused, and the
poisoned data the NaN-guard tests train on."""
import numpy as np

from diffusion.data import datasets


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


def poison_batches_at(monkeypatch, step: int):
    """Make ``datasets.host_batch`` return NaN images at ``step`` (the NaN guard's trigger)."""
    real = datasets.host_batch

    def poisoned(split, batch, at, seed):
        out = real(split, batch, at, seed)
        if at == step:
            out["image"] = out["image"] * np.nan
        return out

    monkeypatch.setattr(datasets, "host_batch", poisoned)
