"""The main job: the embedded 10k MNIST subset, 28×28, small DDPM U-Net, ~25 minutes on 2 CPU cores.

python -m experiments.train --config configs/mnist.py --workdir runs/mnist
"""
from configs import base


def get_config():
    return base.get_config()
