"""The DDPM U-Net (Ho et al. 2020) with the ADM (Dhariwal & Nichol 2021) and Imagen efficient
U-Net (Saharia et al. 2022) changes as options, class and cross-attention conditioning (LDM,
Rombach et al. 2022) and image conditioning by concatenation.

Defaults are Ho et al.'s CIFAR-10 model (35,746,307 parameters with ``dropout=0.1``).
Submodule names mirror diffusers' ``UNet2DModel`` with dots turned into underscores.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.models.conditioning import end_pooled
from diffusion.models.layers import (Attention, Downsample, ResBlock, TimeEmbedding, Upsample, _conv,
                                     _norm, timestep_embedding)

Dtype = Any


class UNet(nn.Module):
    """ε/x_0/v-prediction network ``(x [B, H, W, C], timesteps [B], labels?, context?, cond_image?) -> [B, H, W, out]``.

    ADM options: ``num_heads`` / ``num_head_channels``, several ``attention_resolutions``,
    ``resblock_updown`` (BigGAN-style resampling), ``scale_shift_norm`` (AdaGN),
    ``rescale_residual`` (residual sums × 1/√2). Imagen: per-level ``num_res_blocks``,
    ``scale_skip`` (skip connections × 1/√2), ``efficient`` (downsample before a level's
    convolutions, upsample after). ``num_classes > 0`` adds a label embedding with one extra
    null label (index ``num_classes``) for classifier-free guidance; ``context_dim > 0`` adds
    cross-attention after every self-attention to ``context`` [B, L, D], or, with a
    ``context_encoder`` (a domain encoder τθ of ``diffusion.models.conditioning``, LDM §3.3), to
    τθ(labels), or τθ(tokens) for a text encoder (token ids int[B, L]), trained with the U-Net.
    ``cond_image`` [B, H, W, C'] is concatenated to x along
    the channels (LDM's image-to-image conditioning, SR3's low-resolution input); conv_in's
    kernel takes C + C' channels, fixed by the ``cond_image`` given at init. ``aug_level`` int[B]
    is a cascade's conditioning-augmentation level s (Ho et al. 2021, §3): embedded like t
    (sinusoidal features, then its own two-layer MLP) and added to the time embedding, so every
    ResBlock reads it through the embedding it already takes; its own MLP, because t and s are
    different noises (of x_t and of the conditioning image) and a shared one would make (t, s)
    and (s, t) indistinguishable in the sum. Present when ``aug_level`` is given at init.

    Text (GLIDE, Nichol et al. 2022, §3.1; Imagen, Saharia et al. 2022, §2): a text encoder's
    token sequence τθ(tokens) is the cross-attention context, and its feature at the end token
    (``end_pooled``) is projected and added to the time embedding. That projection is the one
    home of a conditioning vector in the time embedding (``_add_vector``): ``cond_vector`` [B, E]
    enters the same way under its own projection (unCLIP's CLIP image embedding, Ramesh et al.
    2022, §2.1), present when given at init; with ``vector_tokens`` = k > 0 it is also projected into
    k extra tokens of ``context_dim`` appended to the cross-attention context (unCLIP §2.1: four), or
    forming it when nothing else gives one.
    """
    out_channels: int = 3
    image_size: int = 32
    base_channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: Union[int, Sequence[int]] = 2
    attention_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    num_heads: int = 1
    num_head_channels: int = -1
    resblock_updown: bool = False
    scale_shift_norm: bool = False
    rescale_residual: bool = False
    scale_skip: bool = False
    efficient: bool = False
    num_classes: int = 0
    context_dim: int = 0
    context_encoder: Optional[nn.Module] = None
    vector_tokens: int = 0
    norm_groups: int = 32
    norm_eps: float = 1e-6
    remat: bool = False
    attention_implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        super().__post_init__()
        levels = len(self.channel_mult)
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {self.image_size} cannot be halved {levels - 1} times for "
                             f"channel_mult {tuple(self.channel_mult)}: use an image size divisible by "
                             f"{2 ** (levels - 1)} or fewer levels")
        if not isinstance(self.num_res_blocks, int) and len(self.num_res_blocks) != levels:
            raise ValueError(f"num_res_blocks {tuple(self.num_res_blocks)} must give one count per "
                             f"level of channel_mult {tuple(self.channel_mult)}")
        for c in self.channel_mult:
            if (self.base_channels * c) % self.norm_groups:
                raise ValueError(f"{self.base_channels * c} channels are not divisible into "
                                 f"{self.norm_groups} GroupNorm groups: change base_channels or norm_groups")

    def blocks_per_level(self):
        n = self.num_res_blocks
        return [n] * len(self.channel_mult) if isinstance(n, int) else list(n)

    def _kwargs(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        res_kw = dict(dropout=self.dropout, scale_shift_norm=self.scale_shift_norm,
                      output_scale=1 / math.sqrt(2) if self.rescale_residual else 1.0,
                      groups=self.norm_groups, eps=self.norm_eps, **kw)
        attn_kw = dict(num_heads=self.num_heads, num_head_channels=self.num_head_channels,
                       groups=self.norm_groups, eps=self.norm_eps,
                       implementation=self.attention_implementation, **kw)
        res_cls = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        return kw, res_kw, attn_kw, res_cls

    def _add_vector(self, emb, vector, name):
        """emb + W·v: a conditioning vector [B, E] through its own learned projection ``name`` into the
        time embedding [B, 4·ch], where every ResBlock reads it (GLIDE §3.1, Imagen §2, unCLIP §2.1)."""
        return emb + nn.Dense(emb.shape[-1], name=name, **self._kwargs()[0])(vector.astype(self.dtype))

    def _embed(self, timesteps, labels, context, aug_level=None, vectors=None):
        """The time embedding plus the augmentation level's, the class embedding and each conditioning
        vector of ``vectors`` ({projection name: [B, E]})."""
        kw = self._kwargs()[0]
        ch = self.base_channels
        emb = TimeEmbedding(4 * ch, name="time_embedding", **kw)(
            timestep_embedding(timesteps, ch).astype(self.dtype))
        if aug_level is not None:
            emb = emb + TimeEmbedding(4 * ch, name="aug_level_embedding", **kw)(
                timestep_embedding(aug_level, ch).astype(self.dtype))
        elif self.has_variable("params", "aug_level_embedding"):
            raise ValueError("this U-Net was initialised with aug_level (a super-resolution stage told its "
                             "conditioning's augmentation level s): pass aug_level [B]")
        for name, vector in (vectors or {}).items():
            emb = self._add_vector(emb, vector, name)
        if self.num_classes > 0:
            if labels is None:
                raise ValueError("this U-Net is class-conditional: pass labels (num_classes for the null label)")
            emb = emb + nn.Embed(self.num_classes + 1, 4 * ch, name="class_embedding", **kw)(labels)
        if self.context_dim > 0 and context is None:
            raise ValueError("this U-Net has cross-attention (context_dim > 0): pass a context [B, L, D]")
        return emb

    def _attend(self, h, context, prefix, j):
        attn_kw = self._kwargs()[2]
        h = Attention(name=f"{prefix}_attentions_{j}", **attn_kw)(h)
        if self.context_dim > 0:
            h = Attention(name=f"{prefix}_cross_attentions_{j}", **attn_kw)(h, context)
        return h

    def _encode(self, x, emb, context, det):
        """conv_in, the down levels and the middle block; returns h, the skips and h's resolution."""
        kw, res_kw, _, res_cls = self._kwargs()
        ch = self.base_channels
        h = _conv(ch, name="conv_in", **kw)(x.astype(self.dtype))
        skips = [] if self.efficient else [h]
        blocks = self.blocks_per_level()
        levels = len(self.channel_mult)
        resolution = self.image_size
        for i, mult in enumerate(self.channel_mult):
            prefix = f"down_blocks_{i}"
            if self.efficient and i > 0:
                h = self._resample(h, emb, "down", f"{prefix}_downsamplers_0", det)
                resolution //= 2
            for j in range(blocks[i]):
                h = res_cls(ch * mult, name=f"{prefix}_resnets_{j}", **res_kw)(h, emb, det)
                if resolution in self.attention_resolutions:
                    h = self._attend(h, context, prefix, j)
                skips.append(h)
            if not self.efficient and i < levels - 1:
                h = self._resample(h, emb, "down", f"{prefix}_downsamplers_0", det)
                resolution //= 2
                skips.append(h)
        h = res_cls(h.shape[-1], name="mid_block_resnets_0", **res_kw)(h, emb, det)
        h = self._attend(h, context, "mid_block", 0)
        h = res_cls(h.shape[-1], name="mid_block_resnets_1", **res_kw)(h, emb, det)
        return h, skips, resolution

    def _resample(self, h, emb, direction, name, det):
        kw, res_kw, _, res_cls = self._kwargs()
        if self.resblock_updown:
            return res_cls(h.shape[-1], resample=direction, name=name, **res_kw)(h, emb, det)
        layer = Downsample if direction == "down" else Upsample
        return layer(h.shape[-1], name=name, **kw)(h)

    @nn.compact
    def __call__(self, x, timesteps, labels=None, context=None, cond_image=None, aug_level=None, *,
                 train: bool = False, tokens=None, cond_vector=None):
        kw, res_kw, _, res_cls = self._kwargs()
        det = not train
        vectors = {}
        if self.context_encoder is not None:
            if self.context_dim <= 0:
                raise ValueError("a context encoder τθ needs cross-attention to read its tokens: set context_dim > 0")
            source = labels if tokens is None else tokens   # class labels, or a text encoder's token ids
            if source is None:
                raise ValueError("this U-Net's context comes from its context encoder τθ: pass labels "
                                 "(ClassTokens) or tokens (TextTokens)")
            context = self.context_encoder(source)
            if tokens is not None:   # the caption's summary, as GLIDE's class-embedding slot reads it
                vectors["pooled_text_projection"] = end_pooled(context, tokens)
        if cond_vector is not None:
            vectors["cond_vector_projection"] = cond_vector
            if self.vector_tokens:
                if self.context_dim <= 0:
                    raise ValueError("vector_tokens are cross-attention tokens: set context_dim > 0")
                extra = nn.Dense(self.vector_tokens * self.context_dim, name="cond_vector_tokens", **kw)(
                    cond_vector.astype(self.dtype)).reshape(cond_vector.shape[0], self.vector_tokens, self.context_dim)
                context = extra if context is None else jnp.concatenate([context.astype(extra.dtype), extra], axis=1)
        elif self.has_variable("params", "cond_vector_projection"):
            raise ValueError("this U-Net was initialised with cond_vector (a conditioning vector in its time "
                             "embedding): pass cond_vector [B, E]")
        if cond_image is not None:
            x = jnp.concatenate([x, cond_image.astype(x.dtype)], axis=-1)
        emb = self._embed(timesteps, labels, context, aug_level, vectors)
        h, skips, resolution = self._encode(x, emb, context, det)
        skip_scale = 1 / math.sqrt(2) if self.scale_skip else 1.0
        blocks = self.blocks_per_level()
        for u, i in enumerate(reversed(range(len(self.channel_mult)))):
            prefix = f"up_blocks_{u}"
            for j in range(blocks[i] + (0 if self.efficient else 1)):
                h = jnp.concatenate([h, skips.pop() * skip_scale], axis=-1)
                h = res_cls(self.base_channels * self.channel_mult[i], name=f"{prefix}_resnets_{j}",
                            **res_kw)(h, emb, det)
                if resolution in self.attention_resolutions:
                    h = self._attend(h, context, prefix, j)
            if i > 0:
                h = self._resample(h, emb, "up", f"{prefix}_upsamplers_0", det)
                resolution *= 2
        h = nn.swish(_norm(self.norm_groups, self.norm_eps, self.dtype, self.param_dtype, "conv_norm_out")(h))
        return _conv(self.out_channels, name="conv_out", **kw)(h).astype(jnp.float32)


class AttentionPool(nn.Module):
    """ADM's attention pooling: the mean token, with learned positions, attends over all pixels."""
    out_features: int
    num_head_channels: int = 64
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)
        tokens = jnp.concatenate([tokens.mean(1, keepdims=True), tokens], axis=1)
        pos = self.param("positional_embedding", nn.initializers.normal(C ** -0.5), (H * W + 1, C),
                         self.param_dtype)
        tokens = tokens + pos.astype(tokens.dtype)
        heads = max(C // self.num_head_channels, 1)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        split = lambda a: a.reshape(B, a.shape[1], heads, C // heads)
        q = split(nn.Dense(C, name="to_q", **kw)(tokens[:, :1]))
        k, v = split(nn.Dense(C, name="to_k", **kw)(tokens)), split(nn.Dense(C, name="to_v", **kw)(tokens))
        pooled = jax.nn.dot_product_attention(q, k, v).reshape(B, C)
        return nn.Dense(self.out_features, name="to_out", **kw)(pooled)


class NoisyClassifier(UNet):
    """ADM's noisy-image classifier p_φ(y | x_t, t): the U-Net's encoder half and middle block,
    GroupNorm → swish → attention pooling → logits [B, num_labels] (Dhariwal & Nichol 2021, §4)."""
    num_labels: int = 10
    pool_head_channels: int = 64

    @nn.compact
    def __call__(self, x, timesteps, labels=None, context=None, *, train: bool = False):
        emb = self._embed(timesteps, labels, context)
        h, _, _ = self._encode(x, emb, context, not train)
        h = nn.swish(_norm(self.norm_groups, self.norm_eps, self.dtype, self.param_dtype, "norm_out")(h))
        logits = AttentionPool(self.num_labels, self.pool_head_channels, dtype=self.dtype,
                               param_dtype=self.param_dtype, name="pool")(h)
        return logits.astype(jnp.float32)
