"""Latent diffusion on Fashion-MNIST at f = 4 with VQ-reg: the U-Net diffuses the 8×8×3
pre-quantisation latents z_e of configs/latent/autoencoder_vq_f4.py, and the decoder quantises them (LDM).

python -m experiments.train_autoencoder --config configs/latent/autoencoder_vq_f4.py --workdir runs/ae_vq_f4
python -m experiments.train --config configs/latent/fashion_mnist_vq_f4.py --workdir runs/ldm_vq_f4
"""
from configs.latent import fashion_mnist_kl_f4


def get_config():
    c = fashion_mnist_kl_f4.get_config()
    c.data.autoencoder = "runs/ae_vq_f4"
    return c
