"""Latent diffusion (Rombach et al. 2022) on Fashion-MNIST: the U-Net of configs/fashion_mnist.py
diffuses z ∈ R^{8×8×3}, the latents of the KL-reg f = 4 autoencoder (configs/latent/autoencoder_kl_f4.py),
scaled to unit variance by 1/std(z) measured at the start of the run; samples are decoded to
28×28 images. Train the autoencoder first:

python -m experiments.train_autoencoder --config configs/latent/autoencoder_kl_f4.py --workdir runs/ae_kl_f4
python -m experiments.train --config configs/latent/fashion_mnist_kl_f4.py --workdir runs/ldm_kl_f4
"""
from configs import fashion_mnist


def get_config():
    c = fashion_mnist.get_config()
    c.data.autoencoder = "runs/ae_kl_f4"
    c.model.channel_mult, c.model.attention_resolutions = (1, 2, 2), (4,)   # 8 → 4 → 2
    c.diffusion.decoder = "gaussian"   # latents are continuous (the discretised decoder reads 8-bit pixels)
    c.sample.clip = "none"             # unit-variance latents exceed [−1, 1]; LDM does not clip
    return c
