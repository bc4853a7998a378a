"""Text-to-image MNIST on a frozen text encoder (Imagen, Saharia et al. 2022, §2.1): the text tower
of the CLIP run runs/clip_mnist (configs/text/clip_mnist.py), its weights read from that run's checkpoint
and never trained, gives the U-Net its cross-attention context and, at the end token, the vector
projected into the time embedding; the run uses that CLIP's tokenizer. Otherwise configs/text/text_mnist.py.
Train the CLIP first:

python -m experiments.train_clip --config configs/text/clip_mnist.py --workdir runs/clip_mnist
python -m experiments.train --config configs/text/text_mnist_clip.py --workdir runs/text_mnist_clip
python -m experiments.sample --workdir runs/text_mnist_clip --prompt "a thick seven" --guidance classifier_free --scale 3
"""
from configs.text import text_mnist


def get_config():
    c = text_mnist.get_config()
    c.model.context_encoder, c.model.clip_run = "clip_text", "runs/clip_mnist"
    c.model.context_dim = 64           # the CLIP run's clip.text_width (checked)
    return c
