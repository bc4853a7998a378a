"""LDM's KL-regularised first stage (configs/latent/autoencoder_ldm_kl_f4.py) with one level fewer, f = 2:
multipliers 1, 2, z ∈ R^{16×16×3} on CIFAR-10 (4× fewer numbers than pixels). LDM's f = 2 model is
not among its released configs; this keeps every other setting of its f = 4 one.

python -m experiments.train_autoencoder --config configs/latent/autoencoder_ldm_kl_f2.py --workdir runs/ae_ldm_kl_f2 \\
    --inception_weights pt_inception-2015-12-05-6726825d.pth
"""
from configs.latent import autoencoder_ldm_kl_f4


def get_config():
    c = autoencoder_ldm_kl_f4.get_config()
    c.first_stage.factor, c.first_stage.channel_mult = 2, (1, 2)
    return c
