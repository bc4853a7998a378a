"""ADM's noisy classifier p_φ(y | x_t, t) on MNIST for classifier guidance (Dhariwal & Nichol 2021, §4):
the encoder half of the main job's U-Net, trained on x_t at uniform t of its linear schedule.

python -m experiments.train_classifier --config configs/noisy_classifier_mnist.py --workdir runs/noisy_classifier_mnist
"""
from configs import base


def get_config():
    c = base.get_config()
    c.classifier.kind = "noisy"
    c.classifier.max_shift = 0
    c.train.batch_size = 128
    c.train.num_steps = 3000
    c.optim.lr = 3e-4
    c.optim.weight_decay = 0.05        # ADM trains its classifiers with AdamW
    c.optim.optimizer = "adamw"
    return c
