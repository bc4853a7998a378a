"""Seed 004's SDDPM with the dense multi-layer autoencoder (784 → 256 → 30 → 256 → 784).

python -m experiments.train --config configs/sddpm/dense_autoencoder.py --workdir runs/sddpm_dense
"""
from configs.sddpm import shallow_autoencoder


def get_config():
    c = shallow_autoencoder.get_config()
    c.model.kind = "dense_autoencoder"
    return c
