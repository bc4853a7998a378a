"""Improved DDPM on CIFAR-10 (Nichol & Dhariwal 2021): cosine β, learned-range variance, the hybrid
loss and importance-sampled timesteps, on Ho et al.'s architecture.

python -m experiments.train --config configs/cifar10_iddpm.py --workdir runs/cifar10_iddpm
"""
from configs import cifar10_ddpm


def get_config():
    c = cifar10_ddpm.get_config()
    c.diffusion.schedule = "cosine"
    c.diffusion.num_steps = 4000
    c.diffusion.variance = "learned_range"
    c.diffusion.loss = "hybrid"
    c.diffusion.timestep_sampler = "importance"
    c.optim.lr = 1e-4
    c.model.dropout = 0.3
    c.train.num_steps = 500_000
    return c
