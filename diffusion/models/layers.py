"""Building blocks of the U-Net (Ho et al. 2020; Dhariwal & Nichol 2021; Saharia et al. 2022).

Layer names follow diffusers' ``UNet2DModel`` (``norm1``, ``conv1``, ``time_emb_proj``, ``to_q`` …)
so that official DDPM checkpoints map onto them one to one. Images are NHWC.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def timestep_embedding(timesteps, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding [sin | cos] of int or float timesteps [B] (Ho et al.'s ``get_timestep_embedding``)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class TimeEmbedding(nn.Module):
    """The 2-layer MLP on the sinusoidal embedding: Dense → swish → Dense."""
    dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, emb):
        dense = lambda name: nn.Dense(self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        return dense("linear_2")(nn.swish(dense("linear_1")(emb)))


def _conv(features, kernel=3, strides=1, padding=1, dtype=jnp.float32, param_dtype=jnp.float32, name=None):
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding,
                   dtype=dtype, param_dtype=param_dtype, name=name)


def _norm(groups, eps, dtype, param_dtype, name):
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)


def nearest_upsample(x):
    """Each pixel repeated 2×2: the values of ``jax.image.resize(…, "nearest")``, written as a broadcast
    so that the gradient is a sum over each 2×2 block rather than the scatter-add that the resize's
    gather differentiates into, which costs far more (measured: benchmarks/RESULTS.md)."""
    B, H, W, C = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C)).reshape(B, 2 * H, 2 * W, C)


def avg_downsample(x):
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Downsample(nn.Module):
    """3×3 stride-2 convolution with TensorFlow 'SAME' padding (pad one on the bottom/right)."""
    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _conv(self.channels, strides=2, padding=((0, 1), (0, 1)), dtype=self.dtype,
                     param_dtype=self.param_dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 resize then a 3×3 convolution (no transposed convolutions)."""
    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _conv(self.channels, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(nearest_upsample(x))


class ResBlock(nn.Module):
    """GroupNorm → swish → conv, plus the embedding, → GroupNorm → swish → dropout → conv, plus a shortcut.
    ``emb`` None: no embedding (and no ``time_emb_proj``), as in LDM's autoencoders.

    ``scale_shift_norm``: adaptive group norm, norm(h)·(1 + s) + b with (s, b) from the embedding (ADM).
    ``resample``: "up"/"down" inside the block, BigGAN-style (ADM). ``output_scale``: 1/√2 in ADM.
    """
    out_channels: int
    dropout: float = 0.0
    scale_shift_norm: bool = False
    resample: Optional[str] = None
    output_scale: float = 1.0
    groups: int = 32
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, deterministic: bool = True):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.swish(_norm(self.groups, self.eps, self.dtype, self.param_dtype, "norm1")(x))
        if self.resample is not None:
            move = nearest_upsample if self.resample == "up" else avg_downsample
            h, x = move(h), move(x)
        h = _conv(self.out_channels, name="conv1", **kw)(h)
        e = None   # emb None: an unconditional block (LDM's autoencoder blocks, temb_channels=0)
        if emb is not None:
            e = nn.Dense(2 * self.out_channels if self.scale_shift_norm else self.out_channels,
                         name="time_emb_proj", **kw)(nn.swish(emb))[:, None, None, :]
        norm2 = _norm(self.groups, self.eps, self.dtype, self.param_dtype, "norm2")
        if self.scale_shift_norm:
            if e is None:
                raise ValueError("scale_shift_norm needs an embedding: pass emb")
            scale, shift = jnp.split(e, 2, axis=-1)
            h = nn.swish(norm2(h) * (1 + scale) + shift)
        else:
            h = nn.swish(norm2(h if e is None else h + e))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = _conv(self.out_channels, name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, kernel=1, padding=0, name="conv_shortcut", **kw)(x)
        return (x + h) * self.output_scale


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def attention_implementation(requested: str, head_dim: int, dtype) -> str:
    """The ``jax.nn.dot_product_attention`` backend for ``requested`` ("auto", "xla" or "cudnn").

    "auto" picks cuDNN's fused (flash) attention where it applies — a GPU, half-precision operands
    and a head dimension that is a multiple of 8 and at most 128 — and XLA's softmax(QKᵀ/√d)V
    otherwise (CPU, TPU, float32, or one wide head like the DDPM U-Net's 256 channels)."""
    if requested not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {requested!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
    if requested != "auto":
        return requested
    fits = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if fits and jax.default_backend() == "gpu" else "xla"


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention over the pixels, with a residual connection.

    Heads: ``num_head_channels`` channels each when > 0, else ``num_heads`` heads (ADM).
    With ``context`` [B, L, D], keys and values come from it (latent-diffusion conditioning).
    ``implementation``: see ``attention_implementation`` (the same function either way).
    """
    num_heads: int = 1
    num_head_channels: int = -1
    groups: int = 32
    eps: float = 1e-6
    implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        B, H, W, C = x.shape
        heads = C // self.num_head_channels if self.num_head_channels > 0 else self.num_heads
        if C % heads:
            raise ValueError(f"{C} channels cannot be split into {heads} attention heads")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _norm(self.groups, self.eps, self.dtype, self.param_dtype, "group_norm")(x).reshape(B, H * W, C)
        source = h if context is None else context.astype(h.dtype)
        split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, C // heads)
        q = split(nn.Dense(C, name="to_q", **kw)(h))
        k = split(nn.Dense(C, name="to_k", **kw)(source))
        v = split(nn.Dense(C, name="to_v", **kw)(source))
        implementation = attention_implementation(self.implementation, C // heads, q.dtype)
        out = jax.nn.dot_product_attention(q, k, v, implementation=implementation).reshape(B, H * W, C)
        return x + nn.Dense(C, name="to_out", **kw)(out).reshape(B, H, W, C)
