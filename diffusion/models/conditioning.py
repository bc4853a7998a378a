"""Domain encoders τθ for the U-Net's cross-attention (Rombach et al. 2022, §3.3): the conditioning
y → a context sequence τθ(y) [B, L, D] that the U-Net attends to with softmax(QKᵀ/√d)·V,
Q from its features and K, V from the context. Trained jointly with the U-Net, or, for
``FrozenTextTokens``, a pretrained encoder held fixed (Imagen, Saharia et al. 2022, §2.1)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.data.tokenizer import END_ID


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
    """Token ids int[B, L] (``diffusion.data.tokenizer``) → context [B, L, dim]: token and learned
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
        mask = nn.make_causal_mask(tokens)
        for i in range(self.num_layers):
            a = nn.LayerNorm(name=f"layers_{i}_norm1")(h)
            h = h + nn.MultiHeadDotProductAttention(self.num_heads, name=f"layers_{i}_attention")(a, a, mask=mask)
            m = nn.gelu(nn.Dense(4 * self.dim, name=f"layers_{i}_fc1")(nn.LayerNorm(name=f"layers_{i}_norm2")(h)))
            h = h + nn.Dense(self.dim, name=f"layers_{i}_fc2")(m)
        return nn.LayerNorm(name="final_norm")(h)


def end_pooled(context, tokens):
    """The context [B, L, D] at each caption's first end token (CLIP's [EOS] features): [B, D]."""
    position = jnp.argmax(tokens == END_ID, axis=1)
    return jnp.take_along_axis(context, position[:, None, None], axis=1)[:, 0]


class FrozenTextTokens(nn.Module):
    """A pretrained ``TextTokens`` with fixed weights: token ids int[B, L] → its context [B, L, dim]
    under ``stop_gradient`` (Imagen's frozen text encoder, Saharia et al. 2022, §2.1; here the text
    tower of a CLIP run). ``params`` are held by the module, not declared with ``self.param``, so
    they never enter the U-Net's parameters: no optimizer, EMA or checkpoint of the U-Net holds
    them. ``encoder`` is an unbound ``TextTokens`` (``parent=None``) of the pretrained shapes."""
    encoder: TextTokens
    params: Any

    def __call__(self, tokens):
        if self.params is None:
            raise ValueError("this frozen text encoder was built without its pretrained parameters (to check "
                             "shapes only); load them (experiments.common.make_model) before calling it")
        return jax.lax.stop_gradient(self.encoder.apply({"params": self.params}, tokens))
