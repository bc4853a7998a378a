"""unCLIP's decoder P(x | z_i) on MNIST (Ramesh et al. 2022, §2.1): the main job's U-Net and recipe on
the linear schedule (configs/mnist.py) conditioned on each training image's CLIP image embedding z_i
from runs/clip_mnist, embedded in the step by the frozen image tower, projected into the time
embedding and into four extra tokens its cross-attention reads; z_i is replaced by the null (zero)
embedding 10% of the time (the paper's rate) for classifier-free guidance. The paper's decoder may
read the caption too (GLIDE's text encoder, dropped 50% of the time): add
--config.data.captions=mnist --config.model.context_encoder=clip_text
--config.train.caption_dropout=0.5. Not trained to the end yet.

python -m experiments.train --config configs/unclip/decoder_mnist.py --workdir runs/unclip_decoder
python -m experiments.sample --unclip runs/unclip_prior,runs/unclip_decoder --prompt "a thick seven" --scales 1,3
python -m experiments.sample --workdir runs/unclip_decoder --variations 0 --num 8 --scale 3   # held-out image 0
"""
from configs import mnist


def get_config():
    c = mnist.recipe_on_the_linear_schedule()
    c.model.kind, c.model.clip_run = "unclip_decoder", "runs/clip_mnist"
    c.model.context_dim = 64
    c.unclip.embedding_tokens, c.unclip.embedding_dropout = 4, 0.1
    return c
