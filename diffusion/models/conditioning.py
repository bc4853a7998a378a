"""Domain encoders τθ for the U-Net's cross-attention (Rombach et al. 2022, §3.3): the conditioning
y → a context sequence τθ(y) [B, L, D] that the U-Net attends to with softmax(QKᵀ/√d)·V,
Q from its features and K, V from the context. Trained jointly with the U-Net, or, for
``FrozenTextTokens``, a pretrained encoder held fixed (Imagen, Saharia et al. 2022, §2.1)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.text.tokenizer import END_ID


class ClassTokens(nn.Module):
    """Class labels y int[B] in [0, num_classes] → ``num_tokens`` learned tokens each [B, L, dim]
    (LDM's ``ClassEmbedder`` as a sequence). Label ``num_classes`` is the null class of
    classifier-free guidance: its tokens are the null context."""
    num_classes: int
    num_tokens: int = 1
    dim: int = 64

    @nn.compact
    def __call__(self, labels):
        tokens = nn.Embed(self.num_classes + 1, self.num_tokens * self.dim, name="embedding")(labels)
        return tokens.reshape(labels.shape[0], self.num_tokens, self.dim)


class TextTokens(nn.Module):
    """Token ids int[B, L] (``diffusion.text.tokenizer``) → context [B, L, dim]: token and learned
    position embeddings, ``num_layers`` pre-LayerNorm transformer blocks with a causal mask, a
    final LayerNorm (CLIP's text transformer, Radford et al. 2021 §2.4; GLIDE's caption encoder,
    Nichol et al. 2022 §3.1, whose last layer is the U-Net's attention context). Causality makes
    the end token's output a summary of the whole caption (``end_pooled``) that padding never
    reaches. Called on token ids where ``ClassTokens`` is called on labels."""
    vocab_size: int
    max_length: int
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4

    @nn.compact
    def __call__(self, tokens):
        if tokens.ndim != 2 or tokens.shape[1] > self.max_length:
            raise ValueError(f"text encoder takes token ids [B, L <= {self.max_length}], got {tokens.shape}")
        pos = self.param("position_embedding", nn.initializers.normal(0.01), (self.max_length, self.dim))
        h = nn.Embed(self.vocab_size, self.dim, name="token_embedding")(tokens) + pos[:tokens.shape[1]]
        h = transformer_blocks(h, nn.make_causal_mask(tokens), num_layers=self.num_layers, num_heads=self.num_heads)
        return nn.LayerNorm(name="final_norm")(h)


def transformer_blocks(h, mask, *, num_layers: int, num_heads: int, dropout: float = 0.0, deterministic: bool = True):
    """``num_layers`` pre-LayerNorm transformer blocks on h [B, L, W] under ``mask``: h + attention(LN(h)),
    then h + fc2(dropout(gelu(fc1(LN(h))))) with a 4·W hidden layer (GPT-2's block, as CLIP's text
    transformer). Called inside a compact module, whose parameters it adds as ``layers_{i}_*``."""
    width = h.shape[-1]
    for i in range(num_layers):
        a = nn.LayerNorm(name=f"layers_{i}_norm1")(h)
        h = h + nn.MultiHeadDotProductAttention(num_heads, name=f"layers_{i}_attention")(a, a, mask=mask)
        m = nn.gelu(nn.Dense(4 * width, name=f"layers_{i}_fc1")(nn.LayerNorm(name=f"layers_{i}_norm2")(h)))
        m = nn.Dropout(dropout)(m, deterministic=deterministic)
        h = h + nn.Dense(width, name=f"layers_{i}_fc2")(m)
    return h


def end_position(tokens):
    """Each caption's first end token's index int[B] (tokens int[B, L])."""
    return jnp.argmax(tokens == END_ID, axis=1)


def end_pooled(context, tokens):
    """The context [B, L, D] at each caption's first end token (CLIP's [EOS] features): [B, D]."""
    return jnp.take_along_axis(context, end_position(tokens)[:, None, None], axis=1)[:, 0]


def frozen_apply(module: nn.Module, params, *args, missing: str, method=None):
    """``module.apply({"params": params}, *args, method=method)`` under ``stop_gradient``: a pretrained
    network held fixed inside another (its ``params`` a field, not ``self.param``, so they never
    enter the outer model's parameters, optimizer, EMA or checkpoints). Refuses ``params`` None
    (a model built to check shapes only) with ``missing``, the message's start."""
    if params is None:
        raise ValueError(f"{missing} (to check shapes only); load them (experiments.build.make_model) before "
                         "calling it")
    return jax.lax.stop_gradient(module.apply({"params": params}, *args, method=method))


class FrozenTextTokens(nn.Module):
    """A pretrained ``TextTokens`` with fixed weights: token ids int[B, L] → its context [B, L, dim]
    under ``stop_gradient`` (Imagen's frozen text encoder, Saharia et al. 2022, §2.1; here the text
    tower of a CLIP run). ``params`` are held by the module, not declared with ``self.param``, so
    they never enter the U-Net's parameters: no optimizer, EMA or checkpoint of the U-Net holds
    them. ``encoder`` is an unbound ``TextTokens`` (``parent=None``) of the pretrained shapes."""
    encoder: TextTokens
    params: Any

    def __call__(self, tokens):
        return frozen_apply(self.encoder, self.params, tokens, missing="this frozen text encoder was built without its pretrained parameters")
