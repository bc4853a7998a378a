"""LDM's VQ-regularised f = 4 first stage at the paper's settings (Rombach et al. 2022; latent-
diffusion's models/first_stage_models/vq-f4/config.yaml, the one its LDM-4 models load): the encoder
and decoder of configs/latent/autoencoder_ldm_kl_f4.py, z_e ∈ R^{8×8×3} on CIFAR-10 quantised to one of
8,192 codes; taming's VectorQuantizer2 as LDM builds it (β = 0.25 in its legacy form, on the
codebook term: ‖z_e − sg[z_q]‖² + 0.25‖sg[z_e] − z_q‖², written here as codebook_weight 0.25 times
(4·commitment + codebook)); the PatchGAN from step 0 at weight 0.75; batch 8 at LDM's 4.5e-6 per
image, 3.6e-5. The same deviations as the KL config (no LPIPS, GroupNorm in the PatchGAN, 100,000
steps).

python -m experiments.train_autoencoder --config configs/latent/autoencoder_ldm_vq_f4.py --workdir runs/ae_ldm_vq_f4 \
    --inception_weights pt_inception-2015-12-05-6726825d.pth
"""
from configs.latent import autoencoder_ldm_kl_f4


def get_config():
    c = autoencoder_ldm_kl_f4.get_config()
    c.first_stage.kind, c.first_stage.codebook_size, c.first_stage.codebook_update = "vq", 8192, "loss"
    t = c.first_stage_train
    t.codebook_weight, t.commitment, t.disc_start, t.disc_weight = 0.25, 4.0, 0, 0.75
    c.train.batch_size = 8
    c.optim.lr = autoencoder_ldm_kl_f4.LR_PER_IMAGE * c.train.batch_size
    return c
