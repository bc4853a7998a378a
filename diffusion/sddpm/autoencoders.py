"""Seed 004's reverse models: autoencoders with a narrow code (30 units by default) whose structure
is the prior, shallow (784 → 30 → 784), dense multi-layer and convolutional.

Each is ``(x [B, H, W, C], timesteps [B], labels?) -> [B, H, W, out_channels]`` like the U-Net, so
any loss can train it (the SDDPM reads the output as the residual ε_r, Ho et al. as ε, x_0 or v).
The step (optional) and the class (``num_classes > 0``, with a null label ``num_classes``) enter
as embeddings added to the code, the one place every one of them shares.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion.models.layers import TimeEmbedding, timestep_embedding


class CodeConditioning(nn.Module):
    """[B, width]: the sum of the step embedding (sinusoidal → Dense → swish → Dense) when
    ``step_embedding`` and the class embedding when ``num_classes > 0``; zeros with neither."""
    width: int
    step_embedding: bool = True
    num_classes: int = 0

    @nn.compact
    def __call__(self, timesteps, labels=None):
        emb = jnp.zeros((timesteps.shape[0], self.width), jnp.float32)
        if self.step_embedding:
            emb = emb + TimeEmbedding(self.width, name="time_embedding")(timestep_embedding(timesteps, self.width))
        if self.num_classes > 0:
            if labels is None:
                raise ValueError("this autoencoder is class-conditional: pass labels (num_classes for the null label)")
            emb = emb + nn.Embed(self.num_classes + 1, self.width, name="class_embedding")(labels)
        return emb


def flat_input(x, image_shape: Sequence[int], model: str):
    """x [B, H, W, C] (or already flat [B, H·W·C]) as [B, H·W·C], refusing any other size: a dense
    layer is built for one input size."""
    size = math.prod(image_shape)
    if tuple(x.shape[1:]) not in (tuple(image_shape), (size,)):
        shape = "×".join(map(str, image_shape))
        raise ValueError(f"{model} was built for {shape} inputs ({size} values), not {tuple(x.shape[1:])}: "
                         f"build it with image_shape={tuple(x.shape[1:])} (the config's data.image_size and "
                         "data.channels)")
    return x.reshape(x.shape[0], size)


def unflatten(y, x, image_shape: Sequence[int]):
    """The dense output y [B, H·W·out] in the layout of the input x: [B, H, W, out] or flat."""
    return y if x.ndim == 2 else y.reshape(x.shape[0], *image_shape[:2], -1)


class DenseCode(nn.Module):
    """The fields seed 004's dense autoencoders share: the image they map, the code's width and
    what conditions it."""
    image_shape: Sequence[int] = (28, 28, 1)
    out_channels: int = 1
    code_width: int = 30
    step_embedding: bool = True
    num_classes: int = 0


class ShallowAutoencoder(DenseCode):
    """x → Dense(code_width) → swish → Dense(H·W·out_channels): seed 004's 784 → 30 → 784, with the
    conditioning added to the code before the non-linearity."""

    @nn.compact
    def __call__(self, x, timesteps, labels=None, *, train: bool = False):
        del train
        h = flat_input(x, self.image_shape, type(self).__name__)
        cond = CodeConditioning(self.code_width, self.step_embedding, self.num_classes, name="conditioning")
        code = nn.swish(nn.Dense(self.code_width, name="encode")(h) + cond(timesteps, labels))
        out = nn.Dense(math.prod(self.image_shape[:2]) * self.out_channels, name="decode")(code)
        return unflatten(out, x, self.image_shape)


class DenseAutoencoder(DenseCode):
    """x → Dense(width) → Dense(code_width) → Dense(width) → Dense(H·W·out_channels), swish between:
    the multi-layer autoencoder, whose extra layers can bend the code but still see every pixel alike."""
    width: int = 256

    @nn.compact
    def __call__(self, x, timesteps, labels=None, *, train: bool = False):
        del train
        h = nn.swish(nn.Dense(self.width, name="encode_0")(flat_input(x, self.image_shape, type(self).__name__)))
        cond = CodeConditioning(self.code_width, self.step_embedding, self.num_classes, name="conditioning")
        code = nn.swish(nn.Dense(self.code_width, name="encode_1")(h) + cond(timesteps, labels))
        h = nn.swish(nn.Dense(self.width, name="decode_0")(code))
        out = nn.Dense(math.prod(self.image_shape[:2]) * self.out_channels, name="decode_1")(h)
        return unflatten(out, x, self.image_shape)


class ConvAutoencoder(nn.Module):
    """Stride-2 3×3 convolutions (``features`` channels, each halving the image) → Dense(code_width) →
    Dense → stride-2 transposed convolutions back → 3×3 convolution to ``out_channels``, swish
    between: the convolutional autoencoder, whose prior is locality and translation equivariance."""
    image_size: int = 28
    out_channels: int = 1
    code_width: int = 30
    features: Sequence[int] = (16, 32)
    step_embedding: bool = True
    num_classes: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.image_size % 2 ** len(self.features):
            raise ValueError(f"image_size {self.image_size} cannot be halved {len(self.features)} times for "
                             f"features {tuple(self.features)}: use an image size divisible by "
                             f"{2 ** len(self.features)} or fewer levels")

    @nn.compact
    def __call__(self, x, timesteps, labels=None, *, train: bool = False):
        del train
        if x.ndim != 4 or x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"ConvAutoencoder was built for [B, {self.image_size}, {self.image_size}, C] images, "
                             f"not {tuple(x.shape)}")
        h = x
        for i, f in enumerate(self.features):
            h = nn.swish(nn.Conv(f, (3, 3), strides=(2, 2), padding="SAME", name=f"encode_conv_{i}")(h))
        inner = h.shape[1:]
        cond = CodeConditioning(self.code_width, self.step_embedding, self.num_classes, name="conditioning")
        code = nn.swish(nn.Dense(self.code_width, name="encode_code")(h.reshape(h.shape[0], -1)) + cond(timesteps, labels))
        h = nn.swish(nn.Dense(math.prod(inner), name="decode_code")(code)).reshape((-1,) + inner)
        for i, f in enumerate(reversed(self.features)):
            h = nn.swish(nn.ConvTranspose(f, (3, 3), strides=(2, 2), padding="SAME", name=f"decode_conv_{i}")(h))
        return nn.Conv(self.out_channels, (3, 3), padding="SAME", name="decode_out")(h)


# The reverse models of seed 004 by ``model.kind``.
AUTOENCODERS = {"shallow_autoencoder": ShallowAutoencoder, "dense_autoencoder": DenseAutoencoder,
                "conv_autoencoder": ConvAutoencoder}
