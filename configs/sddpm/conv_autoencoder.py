"""Seed 004's SDDPM with the convolutional autoencoder (two stride-2 convolutions, a 30-unit code,
two transposed convolutions back).

python -m experiments.train --config configs/sddpm/conv_autoencoder.py --workdir runs/sddpm_conv
"""
from configs.sddpm import shallow_autoencoder


def get_config():
    c = shallow_autoencoder.get_config()
    c.model.kind = "conv_autoencoder"
    return c
