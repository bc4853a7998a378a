"""LDM's VQ-regularised f = 4 first stage (Rombach et al. 2022; latent-diffusion's vq-f4, as its
configs/latent-diffusion/celebahq-ldm-vq-4.yaml loads it): the encoder and decoder of
configs/autoencoder_ldm_kl_f4.py, z_e ∈ R^{8×8×3} on CIFAR-10 quantised to one of 8,192 codes with
taming's codebook and commitment losses (β = 0.25).

python -m experiments.train_autoencoder --config configs/autoencoder_ldm_vq_f4.py --workdir runs/ae_ldm_vq_f4 \\
    --inception_weights pt_inception-2015-12-05-6726825d.pth
"""
from configs import autoencoder_ldm_kl_f4


def get_config():
    c = autoencoder_ldm_kl_f4.get_config()
    c.first_stage.kind, c.first_stage.codebook_size, c.first_stage.codebook_update = "vq", 8192, "loss"
    c.first_stage_train.commitment = 0.25
    return c
