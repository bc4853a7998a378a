"""GLIDE's noised CLIP on captioned MNIST (Nichol et al. 2022, §3.4): the image tower reads x_t
from q_sample at uniform t of configs/base.py's linear schedule (which the text models keep), and t;
for CLIP guidance. Evaluated at t = 0, T/4 and T/2.

python -m experiments.train_clip --config configs/text/clip_mnist_noisy.py --workdir runs/clip_mnist_noisy
"""
from configs.text import clip_mnist


def get_config():
    c = clip_mnist.get_config()
    c.clip.noise_aware = True
    return c
