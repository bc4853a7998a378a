"""The tiny settings every test that trains shares, so their compiled programs are reused."""


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
