"""KL-regularised autoencoder, f = 8 on Fashion-MNIST: z ∈ R^{4×4×4} (64 numbers for 784 pixels),
where LDM expects detail to be lost.

python -m experiments.train_autoencoder --config configs/latent/autoencoder_kl_f8.py --workdir runs/ae_kl_f8
"""
from configs.latent import autoencoder_kl_f4


def get_config():
    c = autoencoder_kl_f4.get_config()
    c.first_stage.factor, c.first_stage.channel_mult, c.first_stage.latent_channels = 8, (1, 2, 2, 4), 4
    return c
