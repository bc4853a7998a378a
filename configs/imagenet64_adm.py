"""ADM's class-conditional ImageNet 64×64 model (Dhariwal & Nichol 2021, Table 14 and guided-diffusion's
flags): 192 base channels, multipliers 1,2,3,4, 3 res blocks per level, attention at 32, 16 and 8 with
64 channels per head, BigGAN up/downsampling, scale-shift norm, dropout 0.1, cosine schedule with
learned-range variance and the hybrid loss, Adam 3e-4 at batch 2048, EMA 0.9999. About 296M parameters.
Needs ImageNet 64×64 with its labels (TFDS imagenet_resized/64x64; downsampled_imagenet has none) prepared for TFDS.

python -m experiments.train --config configs/imagenet64_adm.py --workdir runs/imagenet64_adm
"""
from configs import cifar10_ddpm


def get_config():
    c = cifar10_ddpm.get_config()
    c.data.source = "tfds:imagenet_resized/64x64"
    c.data.image_size = 64
    c.data.random_flip = False
    c.data.num_classes = 1000
    c.model.base_channels = 192
    c.model.channel_mult = (1, 2, 3, 4)
    c.model.num_res_blocks = 3
    c.model.attention_resolutions = (32, 16, 8)
    c.model.num_head_channels = 64
    c.model.resblock_updown = True
    c.model.scale_shift_norm = True
    c.model.num_classes = 1000
    c.model.dropout = 0.1
    c.diffusion.schedule = "cosine"
    c.diffusion.variance = "learned_range"
    c.diffusion.loss = "hybrid"
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 0
    c.train.batch_size = 2048
    c.train.num_steps = 540_000
    return c
