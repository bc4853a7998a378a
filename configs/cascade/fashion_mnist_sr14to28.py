"""A cascade's super-resolution stage 14×14 → 28×28 on Fashion-MNIST (Ho et al. 2021): the U-Net of
configs/fashion_mnist.py given each image's own 14×14 version, upsampled, as extra input channels,
with Gaussian conditioning augmentation z_s ~ q(z_s | z_0) at s drawn from 0 … 500 and s embedded
like t; sampled at s = 100 (non-truncated) unless told otherwise. Train the base stage first
(configs/cascade/fashion_mnist_base14.py), then:

python -m experiments.train --config configs/cascade/fashion_mnist_sr14to28.py --workdir runs/sr14to28
python -m experiments.sample --cascade runs/base14,runs/sr14to28 --aug_level 100 [--truncated]
python -m experiments.evaluate --cascade runs/base14,runs/sr14to28 --aug_level 100 --samplers ddim:50 \
    --classifier_weights runs/classifier_fashion_mnist/classifier.msgpack
"""
from configs import fashion_mnist


def get_config():
    c = fashion_mnist.get_config()
    c.data.low_resolution = 14
    c.cascade.augmentation = "gaussian"
    c.cascade.aug_level_range = (0, 500)
    c.cascade.aug_level = 100
    return c
