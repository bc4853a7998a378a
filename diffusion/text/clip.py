"""A small CLIP for 28×28 images (Radford et al. 2021): a convolutional image tower, a causal
transformer text tower pooled at the end token (``conditioning.TextTokens``, the same encoder the
U-Net can attend to), linear projections to a joint space and a learned log-temperature
(``diffusion.text.contrastive`` holds the loss). ``noise_aware`` conditions the image tower on the
diffusion step t, for GLIDE's noised CLIP trained on x_t (Nichol et al. 2022, §3.4).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion.models.conditioning import end_pooled, TextTokens
from diffusion.models.layers import TimeEmbedding, timestep_embedding
from diffusion.text.contrastive import INIT_LOG_SCALE


class ImageTower(nn.Module):
    """``x [B, H, W, C] in [−1, 1] (, t int[B]) -> [B, embed_dim]``: per level a 3×3 conv,
    GroupNorm, swish (plus a projection of t's embedding when ``noise_aware``, as ADM's blocks add
    it), 2×2 average pooling between levels, a global mean and a linear projection."""
    features: Sequence[int] = (32, 64, 128)
    embed_dim: int = 64
    noise_aware: bool = False

    @nn.compact
    def __call__(self, x, timesteps=None):
        if self.noise_aware != (timesteps is not None):
            raise ValueError("a noise-aware image tower reads x_t and its step: pass timesteps" if self.noise_aware
                             else "this image tower is not noise-aware (noise_aware=False): pass no timesteps")
        emb = None
        if self.noise_aware:
            emb = nn.swish(TimeEmbedding(4 * self.features[0], name="time_embedding")(
                timestep_embedding(timesteps, self.features[0])))
        h = x
        for i, ch in enumerate(self.features):
            if i:
                h = nn.avg_pool(h, (2, 2), (2, 2))
            h = nn.Conv(ch, (3, 3), name=f"conv_{i}")(h)
            if emb is not None:
                h = h + nn.Dense(ch, name=f"time_proj_{i}")(emb)[:, None, None]
            h = nn.swish(nn.GroupNorm(min(8, ch), name=f"norm_{i}")(h))
        return nn.Dense(self.embed_dim, name="projection")(h.mean((1, 2)))


class CLIP(nn.Module):
    """``(images, tokens[, timesteps]) -> (image embeddings [B, E], text embeddings [B, E], log-scale)``;
    ``encode_image`` and ``encode_text`` (for ``model.apply(..., method=...)``) give each alone."""
    vocab_size: int
    max_length: int
    embed_dim: int = 64
    image_features: Sequence[int] = (32, 64, 128)
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    noise_aware: bool = False

    def setup(self):
        self.image_tower = ImageTower(tuple(self.image_features), self.embed_dim, self.noise_aware)
        self.text_tower = TextTokens(self.vocab_size, self.max_length, self.text_width, self.text_layers,
                                     self.text_heads)
        self.text_projection = nn.Dense(self.embed_dim, use_bias=False)
        self.log_scale = self.param("log_scale", nn.initializers.constant(INIT_LOG_SCALE), ())

    def encode_image(self, images, timesteps=None):
        return self.image_tower(images, timesteps)

    def text_features(self, tokens):
        """(the text tower's token features [B, L, W], the caption's embedding [B, E]: its end-token
        feature projected into the joint space)."""
        features = self.text_tower(tokens)
        return features, self.text_projection(end_pooled(features, tokens))

    def encode_text(self, tokens):
        return self.text_features(tokens)[1]

    def __call__(self, images, tokens, timesteps=None):
        return self.encode_image(images, timesteps), self.encode_text(tokens), jnp.asarray(self.log_scale)
