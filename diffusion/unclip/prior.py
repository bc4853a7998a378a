"""unCLIP's diffusion prior network (Ramesh et al. 2022, §2.2) and the frozen CLIP text side it reads."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffusion.models.conditioning import end_position, frozen_apply, transformer_blocks
from diffusion.models.layers import TimeEmbedding, timestep_embedding
from diffusion.text.clip import CLIP
from diffusion.unclip.embedding import embedding_space


class FrozenCLIPText(nn.Module):
    """A trained CLIP's text side with fixed weights: token ids int[B, L] → (its text tower's token
    features [B, L, W], ``CLIP.encode_text``'s embedding [B, E]) under ``stop_gradient``. ``params``
    (the whole CLIP's) are held by the module, as ``conditioning.FrozenTextTokens`` holds its
    tower's, so they never enter the prior's parameters. ``clip`` is unbound (``parent=None``)."""
    clip: CLIP
    params: Any

    def __call__(self, tokens):
        return frozen_apply(self.clip, self.params, tokens, method=CLIP.text_features,
                            missing="this frozen CLIP was built without its trained parameters")


class PriorTransformer(nn.Module):
    """P(z_i | y)'s denoiser ``(z_i at t [B, E], timesteps [B], tokens int[B, L]) -> [B, out_features]``
    (unCLIP §2.2): a decoder-only transformer with a causal mask over, in order, the caption's
    token features, its CLIP text embedding z_t, the embedding of t, the noised image embedding and
    a learned query, whose output predicts the unnoised z_i (x_0-prediction). Each enters through its
    own projection to ``width``, plus a learned position; padding after the end token is masked
    out as a key. ``text_encoder``: tokens → (features, z_t), e.g. ``FrozenCLIPText``; z_t is read
    in ``embedding_space``, as the image embeddings are."""
    out_features: int
    text_encoder: nn.Module
    width: int = 128
    num_layers: int = 4
    num_heads: int = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, timesteps, *, tokens, train: bool = False):
        features, text_embedding = self.text_encoder(tokens)
        B, L = tokens.shape
        sequence = jnp.concatenate([
            nn.Dense(self.width, name="token_projection")(features),
            nn.Dense(self.width, name="text_embedding_projection")(embedding_space(text_embedding))[:, None],
            TimeEmbedding(self.width, name="time_embedding")(timestep_embedding(timesteps, self.width))[:, None],
            nn.Dense(self.width, name="noised_embedding_projection")(x)[:, None],
            jnp.broadcast_to(self.param("query", nn.initializers.normal(0.02), (self.width,)), (B, 1, self.width)),
        ], axis=1)
        sequence = sequence + self.param("position_embedding", nn.initializers.normal(0.01),
                                         (L + 4, self.width))
        text_kept = jnp.arange(L)[None] <= end_position(tokens)[:, None]   # words and the end token
        keys_kept = jnp.concatenate([text_kept, jnp.ones((B, 4), bool)], axis=1)
        mask = nn.combine_masks(nn.make_causal_mask(keys_kept), nn.make_attention_mask(jnp.ones_like(keys_kept),
                                                                                        keys_kept))
        h = transformer_blocks(sequence, mask, num_layers=self.num_layers, num_heads=self.num_heads,
                               dropout=self.dropout, deterministic=not train)
        return nn.Dense(self.out_features, name="out")(nn.LayerNorm(name="final_norm")(h[:, -1]))
