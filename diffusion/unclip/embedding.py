"""unCLIP's maths on CLIP embeddings (Ramesh et al. 2022, §2): the space both stages read an
embedding in, the decoder's null embedding and its conditioning dropout for classifier-free guidance.

Nothing here reads a config; the networks are in ``diffusion.unclip.prior`` and the U-Net.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion.text import contrastive


def embedding_space(z):
    """z [B, E] → √E·z/‖z‖. CLIP compares embeddings by cosine similarity only (its loss normalises
    them), so the norm carries nothing; √E makes each component's mean square 1, the scale of the
    N(0, I) the forward process ends at (as LDM scales its latents), whatever norm CLIP's
    projection happened to learn. The prior's data, its text input and the decoder's input."""
    return jnp.sqrt(z.shape[-1]) * contrastive.normalize(z.astype(jnp.float32))


def null_embedding(batch: int, dim: int):
    """The decoder's null condition: the zero embedding [B, E] (unCLIP §2.1, "setting the CLIP
    embeddings to zero"), never the image of a ``embedding_space`` vector, whose norm is √E."""
    return jnp.zeros((batch, dim), jnp.float32)


def decoder_condition(keys, x0, *, embed: Callable, dropout: float) -> dict:
    """The decoder's conditioning of a training batch (unCLIP §2.1): each image's CLIP embedding
    z_i = ``embed(x0)``, replaced by the null embedding with probability ``dropout`` (the paper's
    10%) drawn from its row's key, as the U-Net's ``cond_vector``. keys: one per row [B]; x0
    [B, H, W, C] in [−1, 1]; ``embed``: the frozen CLIP image tower, into ``embedding_space``."""
    z = jax.lax.stop_gradient(embed(x0))
    drop = jax.vmap(lambda k: jax.random.bernoulli(k, dropout))(keys)
    return {"cond_vector": jnp.where(drop[:, None], null_embedding(*z.shape), z)}
