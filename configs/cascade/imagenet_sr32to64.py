"""A class-conditional ImageNet cascade stage 32×32 → 64×64 on GPUs (Ho et al. 2021, the 32→64
stage of their ImageNet cascade): ADM's 64×64 U-Net (configs/imagenet64_adm.py) given the upsampled
32×32 image, with Gaussian conditioning augmentation (s from 0 … 500 of its cosine schedule,
embedded like t) and labels dropped 10% of the time for classifier-free guidance per stage. The
base stage is the same config at 32×32 on imagenet_resized/32x32; TFDS:

python -m experiments.train --config configs/imagenet64_adm.py --workdir runs/imagenet_base32 \
    --config.data.source=tfds:imagenet_resized/32x32 --config.data.image_size=32 \
    --config.model.attention_resolutions=16,8,4 --config.data.class_dropout=0.1
python -m experiments.train --config configs/cascade/imagenet_sr32to64.py --workdir runs/imagenet_sr32to64
python -m experiments.sample --cascade runs/imagenet_base32,runs/imagenet_sr32to64 --aug_level 100 --scales 1,0.5
"""
from configs import imagenet64_adm


def get_config():
    c = imagenet64_adm.get_config()
    c.data.low_resolution = 32
    c.data.class_dropout = 0.1
    c.cascade.augmentation = "gaussian"
    c.cascade.aug_level_range = (0, 500)
    c.cascade.aug_level = 100
    return c
