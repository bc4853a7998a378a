"""Seed 004's SDDPM with the convolutional autoencoder (two stride-2 convolutions, a 30-unit code,
two transposed convolutions back).

python -m experiments.train --config configs/sddpm_conv.py --workdir runs/sddpm_conv
"""
from configs import sddpm_shallow


def get_config():
    c = sddpm_shallow.get_config()
    c.model.kind = "conv_autoencoder"
    return c
