"""2-D swiss roll with the MLP denoiser (seed 002's figure); about a minute on CPU.

python -m experiments.train --config configs/swissroll.py --workdir runs/swissroll
"""
from configs import base


def get_config():
    c = base.get_config()
    c.data.source = "toy:swissroll"
    c.data.holdout_fraction = 0.05
    c.model.kind = "mlp"
    c.model.dropout = 0.0
    c.diffusion.num_steps = 100
    c.diffusion.variance = "fixed_small"
    c.diffusion.decoder = "gaussian"
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.ema.decay = 0.995
    c.train.batch_size = 256
    c.train.num_steps = 3000
    c.train.log_every = 100
    c.train.sample_every = 1000
    c.train.checkpoint_every = 1000
    c.sample.sampler = "ddpm"
    c.sample.steps = 100
    c.sample.num = 2000
    c.sample.clip = "none"
    return c
