"""Latent diffusion on Fashion-MNIST at f = 2: z ∈ R^{16×16×1} of configs/latent/autoencoder_kl_f2.py.

python -m experiments.train_autoencoder --config configs/latent/autoencoder_kl_f2.py --workdir runs/ae_kl_f2
python -m experiments.train --config configs/latent/fashion_mnist_kl_f2.py --workdir runs/ldm_kl_f2
"""
from configs.latent import fashion_mnist_kl_f4


def get_config():
    c = fashion_mnist_kl_f4.get_config()
    c.data.autoencoder = "runs/ae_kl_f2"
    c.model.channel_mult, c.model.attention_resolutions = (1, 2, 2), (8,)   # 16 → 8 → 4
    return c
