"""Class-conditional latent diffusion at f = 4 through cross-attention (Rombach et al. 2022, §3.3):
the domain encoder τθ turns each label into 4 learned tokens of 64 channels that every attention
block of the U-Net attends to; labels are dropped to the null class 10% of the time, whose tokens
are the null context of classifier-free guidance.

python -m experiments.train --config configs/latent/fashion_mnist_kl_f4_classes.py --workdir runs/ldm_kl_f4_classes
python -m experiments.sample --workdir runs/ldm_kl_f4_classes --guidance classifier_free --scale 2 --label 7
"""
from configs.latent import fashion_mnist_kl_f4


def get_config():
    c = fashion_mnist_kl_f4.get_config()
    c.model.num_classes, c.data.class_dropout = 10, 0.1
    c.model.context_encoder, c.model.context_tokens, c.model.context_dim = "class_tokens", 4, 64
    return c
