"""unCLIP's diffusion prior P(z_i | y) on MNIST (Ramesh et al. 2022, §2.2): a diffusion model over the
CLIP image embeddings z_i of runs/clip_mnist (64-d, scaled to norm √64), conditioned on each image's
caption through that CLIP's frozen text side: a causal transformer reads the caption's token
features, its CLIP text embedding, t, the noised z_i and a query whose output predicts the unnoised
z_i (x_0-prediction, MSE; the paper's cosine schedule, T = 1000, and 64 sampling steps). The
embeddings are computed once at the start of the run; 10% of the captions are replaced by the null
caption (the paper's rate) for classifier-free guidance. Untuned settings: not trained to the end yet.

python -m experiments.train_clip --config configs/text/clip_mnist.py --workdir runs/clip_mnist
python -m experiments.train --config configs/unclip/prior_mnist.py --workdir runs/unclip_prior
python -m experiments.train --config configs/unclip/decoder_mnist.py --workdir runs/unclip_decoder
python -m experiments.sample --unclip runs/unclip_prior,runs/unclip_decoder --prompt "a thick seven" --scales 1,3
"""
from configs import base


def get_config():
    c = base.get_config()
    c.model.kind, c.model.clip_run = "unclip_prior", "runs/clip_mnist"
    c.model.context_encoder, c.model.context_dim = "clip_text", 64   # the CLIP's text tower and its width (checked)
    c.data.captions = "mnist"
    c.train.caption_dropout = 0.1
    c.unclip.width, c.unclip.layers, c.unclip.heads = 128, 4, 4
    c.diffusion.schedule, c.diffusion.prediction = "cosine", "x0"
    c.diffusion.variance, c.diffusion.decoder = "fixed_small", "gaussian"
    c.optim.lr, c.optim.decay = 3e-4, "cosine"
    c.train.batch_size, c.train.num_steps = 256, 5000
    c.sample.sampler, c.sample.steps, c.sample.clip = "ddim", 64, "none"
    return c
