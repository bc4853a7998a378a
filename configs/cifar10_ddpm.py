"""Ho et al. 2020's CIFAR-10 model exactly (35.7M parameters): batch 128, Adam 2e-4, 5,000 warm-up
steps, clipping 1.0, dropout 0.1, EMA 0.9999, random flips, linear β, T = 1000, 800k steps.
Needs CIFAR-10 prepared for TFDS.

python -m experiments.train --config configs/cifar10_ddpm.py --workdir runs/cifar10_ddpm
"""
from configs import base


def get_config():
    c = base.get_config()
    c.data.source = "tfds:cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.random_flip = True
    c.data.holdout_fraction = 0.0      # TFDS's own test split is the held-out set
    c.model.base_channels = 128
    c.model.channel_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attention_resolutions = (16,)
    c.model.norm_groups = 32
    c.model.dropout = 0.1
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 5000
    c.ema.decay = 0.9999
    c.ema.warmup = False
    c.train.batch_size = 128
    c.train.num_steps = 800_000
    c.train.sample_every = 10_000
    c.train.checkpoint_every = 10_000
    return c
