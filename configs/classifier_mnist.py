"""The feature classifier for 28×28 digits: its logits give the Inception Score and its 128-d
features the FID of MNIST samples. Its trained weights ship as ``diffusion/data/mnist_classifier.msgpack``.

python -m experiments.train_classifier --config configs/classifier_mnist.py --workdir runs/classifier_mnist
"""
from configs import base


def get_config():
    c = base.get_config()
    c.train.batch_size = 128
    c.train.num_steps = 1500
    c.train.checkpoint_every = 500
    c.optim.warmup_steps = 100
    c.optim.decay = "cosine"
    c.ema.decay = 0.99
    return c
