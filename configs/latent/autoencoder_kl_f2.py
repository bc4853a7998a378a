"""KL-regularised autoencoder, f = 2 on Fashion-MNIST: z ∈ R^{16×16×1} (256 numbers for 784 pixels).

python -m experiments.train_autoencoder --config configs/latent/autoencoder_kl_f2.py --workdir runs/ae_kl_f2
"""
from configs.latent import autoencoder_kl_f4


def get_config():
    c = autoencoder_kl_f4.get_config()
    c.first_stage.factor, c.first_stage.channel_mult, c.first_stage.latent_channels = 2, (1, 2), 1
    return c
