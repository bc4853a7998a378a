"""Text-to-image MNIST with a caption encoder trained jointly with the U-Net (GLIDE, Nichol et al.
2022, §3.1; LDM's τθ, Rombach et al. 2022, §3.3): each image carries one caption measured on it
("a thick, right-slanted seven", diffusion.text.captions); a 2-layer causal transformer encodes
its tokens, every attention block of the U-Net cross-attends to them, and the end token's feature
is projected into the time embedding. 20% of the captions are replaced by the null (empty)
caption, GLIDE's rate, for classifier-free guidance.

python -m experiments.train --config configs/text/text_mnist.py --workdir runs/text_mnist
python -m experiments.sample --workdir runs/text_mnist --prompt "a thick seven" --prompt "the digit 2, left-slanted and small" \
    --num 16 --guidance classifier_free --scale 3
"""
from configs import mnist


def get_config():
    c = mnist.recipe_on_the_linear_schedule()
    c.data.captions = "mnist"
    c.model.context_encoder, c.model.context_dim = "text", 64
    c.model.text_layers, c.model.text_heads = 2, 4
    c.train.caption_dropout = 0.2
    return c
