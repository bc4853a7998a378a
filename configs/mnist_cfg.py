"""Class-conditional MNIST for classifier-free guidance (Ho & Salimans 2021): labels dropped 10% of the time.

python -m experiments.train --config configs/mnist_cfg.py --workdir runs/mnist_cfg
"""
from configs import base


def get_config():
    c = base.get_config()
    c.model.num_classes = 10
    c.data.class_dropout = 0.1
    return c
