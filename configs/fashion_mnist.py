"""Fashion-MNIST (all 70k images) read from an .npz by path.

python -m experiments.train --config configs/fashion_mnist.py --workdir runs/fashion \
    --config.data.source=../shared/data/fashion_mnist_70k.npz
"""
from configs import base


def get_config():
    c = base.get_config()
    c.data.source = "../shared/data/fashion_mnist_70k.npz"
    c.data.holdout_fraction = 1 / 7    # 10k held out, as the original test split
    c.model.base_channels = 64
    c.train.num_steps = 20000
    return c
