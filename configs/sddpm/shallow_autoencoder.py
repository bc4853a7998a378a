"""Seed 004's SDDPM as written, with its shallow autoencoder (784 → 30 → 784) as the reverse
model: constant β = 0.2, T = 50, −log q_r on forward pairs, the residual mean x_t + ε_r, ancestral
sddpm sampling; 10 epochs of the embedded MNIST (1,406 steps at batch 64), ~15 s on 2 CPU cores.

python -m experiments.train --config configs/sddpm/shallow_autoencoder.py --workdir runs/sddpm_shallow
"""
from configs import base


def get_config():
    c = base.get_config()
    c.model.kind = "shallow_autoencoder"
    c.diffusion.schedule, c.diffusion.num_steps = "constant", 50
    c.diffusion.loss = "sddpm"
    c.diffusion.prediction = "residual"      # the network is the seed's ε_r: the mean of x_{t−1} is x_t + ε_r(x_t, t)
    c.diffusion.variance = "fixed_large"
    c.sample.sampler, c.sample.steps = "sddpm", 50
    c.train.num_steps = 1406           # 10 epochs of the 9,000 training images, as the seed's pictures
    c.train.sample_every = c.train.checkpoint_every = 703
    c.optim.decay = "cosine"
    return c
