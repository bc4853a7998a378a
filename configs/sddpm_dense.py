"""Seed 004's SDDPM with the dense multi-layer autoencoder (784 → 256 → 30 → 256 → 784).

python -m experiments.train --config configs/sddpm_dense.py --workdir runs/sddpm_dense
"""
from configs import sddpm_shallow


def get_config():
    c = sddpm_shallow.get_config()
    c.model.kind = "dense_autoencoder"
    return c
