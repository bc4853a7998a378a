"""LDM's KL-regularised f = 4 first stage at the paper's settings (Rombach et al. 2022; CompVis/
latent-diffusion configs/autoencoder/autoencoder_kl_64x64x3.yaml): 128 base channels, multipliers
1, 2, 4, two ResBlocks per level, attention in the middle block only, GroupNorm(32), z with c = 3,
β_KL = 1e-6, a 3-layer PatchGAN (64 channels) with the hinge loss switched on at step 50,001 with
weight 0.5; batch 12 with 2 accumulated batches (here batch 24 at once) and LDM's rate 4.5e-6 per
image, 1.08e-4 on one GPU, Adam β = (0.5, 0.9), no clipping, no weight average. On CIFAR-10
(z ∈ R^{8×8×3}, 16× fewer numbers than pixels, as LDM-4's 64×64×3 for 256² images); the
latent_diffusion study at ``--scale paper`` trains it on its dataset. Not the paper's: no LPIPS
term (its weights cannot be downloaded here; the reconstruction loss is L1 alone) and the length,
which LDM does not state: 100,000 steps, half of them with the adversarial loss; the PatchGAN
normalises with GroupNorm where LDM's uses BatchNorm. Needs CIFAR-10 prepared for TFDS; the rFID
needs --inception_weights.

python -m experiments.train_autoencoder --config configs/latent/autoencoder_ldm_kl_f4.py --workdir runs/ae_ldm_kl_f4 \\
    --inception_weights pt_inception-2015-12-05-6726825d.pth
"""
from configs import base, cifar10_ddpm

LR_PER_IMAGE = 4.5e-6                  # LDM's base_learning_rate, times the batch (its main.py scales it so)


def get_config():
    c = base.get_config()
    c.data = cifar10_ddpm.get_config().data
    f = c.first_stage
    f.kind, f.factor, f.channel_mult, f.latent_channels = "kl", 4, (1, 2, 4), 3
    f.base_channels, f.num_res_blocks, f.mid_attention, f.norm_groups = 128, 2, True, 32
    f.discriminator, f.disc_channels, f.disc_layers = True, 64, 3
    t = c.first_stage_train
    t.reconstruction, t.kl_weight, t.disc_weight, t.disc_start = "l1", 1e-6, 0.5, 50_001
    c.optim.b1, c.optim.b2, c.optim.grad_clip, c.optim.warmup_steps = 0.5, 0.9, 0.0, 0
    c.ema.decay = 0.0                  # LDM's first stage keeps no average: the "EMA" is the weights
    c.train.batch_size, c.train.num_steps = 24, 100_000
    c.optim.lr = LR_PER_IMAGE * c.train.batch_size
    c.train.sample_every = c.train.checkpoint_every = 10_000
    return c
