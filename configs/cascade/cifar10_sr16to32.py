"""A cascade for CIFAR-10 on GPUs (Ho et al. 2021): this super-resolution stage 16×16 → 32×32 with
Gaussian conditioning augmentation (s from 0 … 500, embedded like t), on Ho et al. 2020's U-Net
(configs/cifar10_ddpm.py). Its base stage is the same config at 16×16 with three levels; TFDS CIFAR-10:

python -m experiments.train --config configs/cifar10_ddpm.py --workdir runs/cifar10_base16 \
    --config.data.image_size=16 --config.model.channel_mult=1,2,2 --config.model.attention_resolutions=8
python -m experiments.train --config configs/cascade/cifar10_sr16to32.py --workdir runs/cifar10_sr16to32
python -m experiments.evaluate --cascade runs/cifar10_base16,runs/cifar10_sr16to32 --aug_level 100 \
    --samplers ddpm:1000 --num 50000 --inception_weights pt_inception-2015-12-05-6726825d.pth
"""
from configs import cifar10_ddpm


def get_config():
    c = cifar10_ddpm.get_config()
    c.data.low_resolution = 16
    c.cascade.augmentation = "gaussian"
    c.cascade.aug_level_range = (0, 500)
    c.cascade.aug_level = 100
    return c
