"""A small residual MLP denoiser for 2-D toy data (swiss roll, two moons, Gaussian mixtures)."""
from __future__ import annotations

import flax.linen as nn

from diffusion.models.layers import TimeEmbedding, timestep_embedding


class MLPDenoiser(nn.Module):
    """``(x [B, D], timesteps [B], labels?) -> [B, out_features]``: sinusoidal time embedding through a
    2-layer MLP, added into ``depth`` pre-norm residual blocks of width ``hidden``."""
    out_features: int = 2
    hidden: int = 256
    depth: int = 4
    num_classes: int = 0
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, timesteps, labels=None, *, train: bool = False):
        emb = TimeEmbedding(self.hidden, name="time_embedding")(timestep_embedding(timesteps, self.hidden))
        if self.num_classes > 0:
            if labels is None:
                raise ValueError("this MLP is class-conditional: pass labels (num_classes for the null label)")
            emb = emb + nn.Embed(self.num_classes + 1, self.hidden, name="class_embedding")(labels)
        h = nn.Dense(self.hidden, name="dense_in")(x)
        for i in range(self.depth):
            r = nn.LayerNorm(name=f"norm_{i}")(h) + nn.Dense(self.hidden, name=f"time_proj_{i}")(nn.swish(emb))
            r = nn.Dense(self.hidden, name=f"dense_{i}_0")(nn.swish(r))
            r = nn.Dropout(self.dropout)(r, deterministic=not train)
            h = h + nn.Dense(self.hidden, name=f"dense_{i}_1")(nn.swish(r))
        return nn.Dense(self.out_features, name="dense_out")(nn.swish(nn.LayerNorm(name="norm_out")(h)))
