"""The feature classifier for Fashion-MNIST (FID and IS of Fashion-MNIST samples).

python -m experiments.train_classifier --config configs/classifier_fashion_mnist.py --workdir runs/classifier_fashion_mnist
"""
from configs import classifier_mnist, fashion_mnist


def get_config():
    c = classifier_mnist.get_config()
    c.data = fashion_mnist.get_config().data
    c.train.num_steps = 6000
    c.classifier.max_shift = 1
    return c
