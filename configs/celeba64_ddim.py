"""CelebA 64×64 as trained for DDIM (Song et al. 2021, App. D.1): the 128×128 face box DDIM crops
from each 218×178 image, resized to 64×64; Ho et al.'s CelebA-HQ-style U-Net at 64×64 (channel
multipliers 1,2,2,2,4, attention at 16×16), sampled with DDIM. Needs celeb_a in TFDS.

python -m experiments.train --config configs/celeba64_ddim.py --workdir runs/celeba64
"""
from configs import cifar10_ddpm


def get_config():
    c = cifar10_ddpm.get_config()
    c.data.source = "tfds:celeb_a"
    c.data.image_size = 64
    c.data.crop = "celeba_ddim"        # DDIM's face box (rows 57–184, columns 25–152), not a centre square
    c.model.channel_mult = (1, 2, 2, 2, 4)
    c.model.dropout = 0.1
    c.train.num_steps = 500_000
    c.sample.steps = 100
    return c
