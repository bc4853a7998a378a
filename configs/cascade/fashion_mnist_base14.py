"""A cascade's base stage (Ho et al. 2021): Fashion-MNIST at 14×14 (each image averaged over 2×2
blocks, the filter the super-resolution stage shrinks its input with), the U-Net of
configs/fashion_mnist.py with two levels (14 → 7). Its samples are upsampled to 28×28 by
configs/cascade/fashion_mnist_sr14to28.py:

python -m experiments.train --config configs/cascade/fashion_mnist_base14.py --workdir runs/base14
python -m experiments.train --config configs/cascade/fashion_mnist_sr14to28.py --workdir runs/sr14to28
python -m experiments.sample --cascade runs/base14,runs/sr14to28 --aug_level 100
"""
from configs import fashion_mnist


def get_config():
    c = fashion_mnist.get_config()
    c.data.image_size = 14
    c.model.channel_mult = (1, 2)
    return c
