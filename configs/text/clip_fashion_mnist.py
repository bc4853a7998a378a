"""CLIP on captioned Fashion-MNIST ("a large, dark trouser"): size and shade measured on each image.

python -m experiments.train_clip --config configs/text/clip_fashion_mnist.py --workdir runs/clip_fashion_mnist
"""
from configs.text import clip_mnist


def get_config():
    c = clip_mnist.get_config()
    c.data.source = "../shared/data/fashion_mnist_70k.npz"
    c.data.holdout_fraction = 1 / 7    # 10k held out, as the original test split
    c.clip.domain = "fashion_mnist"
    return c
