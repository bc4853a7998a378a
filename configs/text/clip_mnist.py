"""A small CLIP on captioned MNIST (Radford et al. 2021): captions from the class and attributes
measured on each image (``diffusion.text.captions``), a word-level tokenizer built from them, a
conv image tower and a 2-layer causal text transformer trained with the symmetric InfoNCE loss.
Records zero-shot class accuracy and retrieval recall@1/@5 on the held-out images.

python -m experiments.train_clip --config configs/text/clip_mnist.py --workdir runs/clip_mnist
"""
import ml_collections

from configs import base


def get_config():
    c = base.get_config()
    c.clip = ml_collections.ConfigDict()
    c.clip.domain = "mnist"              # caption vocabulary and attributes: "mnist" or "fashion_mnist"
    c.clip.embed_dim = 64                # joint image–text space
    c.clip.image_features = (32, 64, 128)
    c.clip.text_width = 64
    c.clip.text_layers = 2
    c.clip.text_heads = 4
    c.clip.max_length = 0                # tokens per prompt with the end token; 0: the longest caption's
    c.clip.noise_aware = False           # GLIDE's noised CLIP: the image tower reads x_t and t
    c.clip.retrieval_examples = 1000     # held-out image–caption pairs ranked against each other
    c.train.batch_size = 128
    c.train.num_steps = 4000
    c.train.checkpoint_every = 1000
    c.optim.warmup_steps = 100
    c.optim.decay = "cosine"
    c.ema.decay = 0.99
    return c
