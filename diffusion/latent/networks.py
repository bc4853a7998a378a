"""The first stage of latent diffusion (Rombach et al. 2022): a convolutional autoencoder
x ∈ R^{H×W×C} → z = ℰ(x) ∈ R^{h×w×c} → x̃ = 𝒟(z), with f = H/h = 2^m, regularised by a small KL
penalty (``AutoencoderKL``) or by vector quantisation absorbed into the decoder (``AutoencoderVQ``).
The discriminator of its optional adversarial loss is ``patch_gan.PatchDiscriminator``.

The layout is LDM's ``Encoder``/``Decoder`` (``ldm/modules/diffusionmodules/model.py``) on this
library's blocks: ``conv_in``, per level ``num_res_blocks`` ResBlocks then a stride-2 downsample
(not after the last level), a middle ResBlock → attention (optional) → ResBlock, GroupNorm → swish
→ ``conv_out``; the decoder mirrors it with ``num_res_blocks + 1`` blocks per level and
nearest-neighbour upsampling. Images are NHWC in [−1, 1].

Latents for diffusion on z: ``model.apply(v, x, method="encode")`` gives z
[B, (H + 2·pad)/f, (W + 2·pad)/f, latent_channels] (``latent_shape``); ``method="decode"`` maps z
back to [B, H, W, C]. ``pad`` pixels of background (−1) are added around the image before encoding
and cropped after decoding, so a 28×28 image can use f = 8 (32×32 inside the model).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.models.layers import _conv, _norm, Attention, Downsample, ResBlock, Upsample

FACTORS = (1, 2, 4, 8)
LOGVAR_RANGE = (-30.0, 20.0)   # LDM's DiagonalGaussianDistribution clamps log σ² to this


def latent_shape(image_size: int, pad: int, factor: int, latent_channels: int) -> tuple[int, int, int]:
    """(h, w, c) of z for square ``image_size`` images padded by ``pad`` on each side."""
    side = (image_size + 2 * pad) // factor
    return side, side, latent_channels


def scale_factor(latents) -> float:
    """LDM's ``scale_factor`` s = 1/std(z) over every element of the training latents z [N, h, w, c]
    (Rombach et al. 2022, §4.3.2 and Appendix G), so that s·z has unit variance, as the forward
    process q(x_t | x_0) assumes of its data; computed in float64."""
    return float(1.0 / np.std(np.asarray(latents, np.float64)))


def check_factor(image_size: int, pad: int, factor: int, channel_mult: Sequence[int], field: str = "first_stage."):
    """Refuse a downsampling factor f that is not one of ``FACTORS``, that the padded image size is
    not divisible by, or that ``channel_mult`` (one entry per level, f = 2^(levels − 1)) disagrees with."""
    if factor not in FACTORS:
        raise ValueError(f"config field {field}factor={factor!r} is not one of {list(FACTORS)}")
    side = image_size + 2 * pad
    if side % factor:
        fit = next((p for p in range(pad, pad + factor) if (image_size + 2 * p) % factor == 0), None)
        fix = (f"set --config.{field}pad={fit} ({image_size + 2 * fit}×{image_size + 2 * fit} inside the model)"
               if fit is not None else "use an image size that a power of two divides")
        raise ValueError(f"the downsampling factor {field}factor={factor} does not divide the image size "
                         f"{image_size} + 2·{field}pad={pad} = {side}: {fix}, or a smaller factor")
    levels = int(math.log2(factor)) + 1
    if len(channel_mult) != levels:
        raise ValueError(f"config field {field}channel_mult={tuple(channel_mult)} has {len(channel_mult)} levels "
                         f"but {field}factor={factor} needs log2(f) + 1 = {levels} (one per resolution)")


def pad_images(x, pad: int):
    """x [B, H, W, C] with ``pad`` pixels of −1 (black background) on every side."""
    return x if pad == 0 else jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)


def crop_images(x, pad: int):
    """The inverse of ``pad_images``."""
    return x if pad == 0 else x[:, pad:-pad, pad:-pad]


class _Stack(nn.Module):
    """Shared fields of the encoder and decoder."""
    out_channels: int
    base_channels: int = 64
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    mid_attention: bool = True
    norm_groups: int = 8

    def _middle(self, h):
        h = ResBlock(h.shape[-1], groups=self.norm_groups, name="mid_block_1")(h, None)
        if self.mid_attention:
            h = Attention(groups=self.norm_groups, name="mid_attention")(h)
        return ResBlock(h.shape[-1], groups=self.norm_groups, name="mid_block_2")(h, None)

    def _out(self, h):
        h = nn.swish(_norm(self.norm_groups, 1e-6, jnp.float32, jnp.float32, "norm_out")(h))
        return _conv(self.out_channels, name="conv_out")(h)


class Encoder(_Stack):
    """x [B, H, W, C] → [B, H/f, W/f, out_channels], f = 2^(len(channel_mult) − 1) (LDM's ``Encoder``)."""

    @nn.compact
    def __call__(self, x):
        h = _conv(self.base_channels, name="conv_in")(x)
        levels = len(self.channel_mult)
        for i, mult in enumerate(self.channel_mult):
            for j in range(self.num_res_blocks):
                h = ResBlock(self.base_channels * mult, groups=self.norm_groups, name=f"down_{i}_block_{j}")(h, None)
            if i < levels - 1:
                h = Downsample(h.shape[-1], name=f"down_{i}_downsample")(h)
        return self._out(self._middle(h))


class Decoder(_Stack):
    """z [B, h, w, c] → [B, h·f, w·f, out_channels] (LDM's ``Decoder``); ``conv_out`` is the last
    layer that the adversarial weight's gradients are taken at."""

    @nn.compact
    def __call__(self, z):
        levels = len(self.channel_mult)
        h = _conv(self.base_channels * self.channel_mult[-1], name="conv_in")(z)
        h = self._middle(h)
        for i in reversed(range(levels)):
            for j in range(self.num_res_blocks + 1):
                h = ResBlock(self.base_channels * self.channel_mult[i], groups=self.norm_groups,
                             name=f"up_{i}_block_{j}")(h, None)
            if i > 0:
                h = Upsample(h.shape[-1], name=f"up_{i}_upsample")(h)
        return self._out(h)


class FirstStage(nn.Module):
    """What LDM's autoencoders share: the architecture fields and the encoder/decoder pair."""
    channels: int = 1
    latent_channels: int = 3
    base_channels: int = 64
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    mid_attention: bool = True
    norm_groups: int = 8
    pad: int = 0

    def coders(self, encoder_channels: int) -> tuple["Encoder", "Decoder"]:
        """(ℰ with ``encoder_channels`` outputs, 𝒟 back to the image's channels)."""
        kw = dict(base_channels=self.base_channels, channel_mult=tuple(self.channel_mult),
                  num_res_blocks=self.num_res_blocks, mid_attention=self.mid_attention, norm_groups=self.norm_groups)
        return Encoder(out_channels=encoder_channels, **kw), Decoder(out_channels=self.channels, **kw)


class AutoencoderKL(FirstStage):
    """KL-regularised autoencoder: ℰ(x) gives the mean and log-variance of q(z|x) = N(μ, diag σ²);
    z is the reparameterised μ + σ·ε in training and μ at inference; 𝒟(z) the reconstruction.

    ``__call__(x, key=None) -> (x̃ [B, H, W, C], aux)`` with ``aux`` = {"mean", "logvar", "z"};
    a ``key`` samples z, None takes the mean.
    """

    def setup(self):
        self.encoder, self.decoder = self.coders(2 * self.latent_channels)
        self.quant_conv = nn.Conv(2 * self.latent_channels, (1, 1))          # LDM's 1×1 moments projection
        self.post_quant_conv = nn.Conv(self.latent_channels, (1, 1))

    def moments(self, x):
        """(μ, log σ²) of q(z|x), each [B, h, w, c]; log σ² clipped to ``LOGVAR_RANGE`` as LDM does."""
        mean, logvar = jnp.split(self.quant_conv(self.encoder(pad_images(x, self.pad))), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    @staticmethod
    def sample(mean, logvar, key: Optional[jax.Array] = None):
        """μ, or the reparameterised μ + σ·ε with ε ~ N(0, I) drawn from ``key``."""
        return mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)

    def encode(self, x, key: Optional[jax.Array] = None):
        """z [B, h, w, c]: μ, or a sample of q(z|x) given ``key``."""
        return self.sample(*self.moments(x), key)

    def decode(self, z):
        """x̃ [B, H, W, C] (cropped back to the data's size)."""
        return crop_images(self.decoder(self.post_quant_conv(z)), self.pad)

    def __call__(self, x, key: Optional[jax.Array] = None):
        mean, logvar = self.moments(x)
        z = self.sample(mean, logvar, key)
        return self.decode(z), {"mean": mean, "logvar": logvar, "z": z}


def nearest_code(z, codebook):
    """Indices int[...] of the codebook rows [K, c] nearest to each vector of z [..., c] in L2:
    argmin_k ‖z‖² − 2 z·e_k + ‖e_k‖²."""
    flat = z.reshape(-1, z.shape[-1])
    d = jnp.sum(flat ** 2, 1, keepdims=True) - 2 * flat @ codebook.T + jnp.sum(codebook ** 2, 1)[None]
    return jnp.argmin(d, axis=1).reshape(z.shape[:-1])


class VectorQuantizer(nn.Module):
    """z_e [B, h, w, c] → (z_e + sg[z_q − z_e], aux) with z_q the nearest codebook vector (van den
    Oord et al. 2017): the forward pass is z_q, the gradient reaches z_e unchanged (straight through).

    ``ema``: the codebook lives in the ``vq_ema`` collection (``codebook``, ``cluster_size``,
    ``embed_sum``) and is updated by ``autoencoder_losses.ema_codebook_update`` rather than by a
    gradient; otherwise it is the parameter ``codebook`` (taming's uniform(−1/K, 1/K) initialisation).
    ``aux``: {"z_e", "z_q" (carrying the codebook's gradient), "indices"}.
    """
    codebook_size: int
    dim: int
    ema: bool = False

    @nn.compact
    def __call__(self, z_e):
        K = self.codebook_size
        init = nn.initializers.uniform(2.0 / K)
        shifted = lambda key, shape: init(key, shape) - 1.0 / K
        if self.ema:
            codebook = self.variable("vq_ema", "codebook", lambda: shifted(self.make_rng("params"), (K, self.dim))).value
            self.variable("vq_ema", "cluster_size", lambda: jnp.ones((K,), jnp.float32))
            self.variable("vq_ema", "embed_sum", lambda: jnp.copy(codebook))
        else:
            codebook = self.param("codebook", shifted, (K, self.dim))
        indices = nearest_code(jax.lax.stop_gradient(z_e), jax.lax.stop_gradient(codebook))
        z_q = codebook[indices]
        return z_e + jax.lax.stop_gradient(z_q - z_e), {"z_e": z_e, "z_q": z_q, "indices": indices}


class AutoencoderVQ(FirstStage):
    """VQ-regularised autoencoder (LDM's ``VQModel``): ℰ(x) gives continuous z_e; the quantiser is
    part of decoding, so ``encode`` returns z_e (what phase 2 diffuses) and ``decode`` quantises then
    decodes. ``__call__(x, key=None) -> (x̃, aux)`` with the quantiser's ``aux``."""
    codebook_size: int = 256
    ema: bool = False

    def setup(self):
        self.encoder, self.decoder = self.coders(self.latent_channels)
        self.quant_conv = nn.Conv(self.latent_channels, (1, 1))
        self.quantize = VectorQuantizer(self.codebook_size, self.latent_channels, ema=self.ema)
        self.post_quant_conv = nn.Conv(self.latent_channels, (1, 1))

    def encode(self, x, key: Optional[jax.Array] = None):
        """z_e [B, h, w, c], before quantisation (``key`` is unused: the encoder is deterministic)."""
        del key
        return self.quant_conv(self.encoder(pad_images(x, self.pad)))

    def decode_quantized(self, z_q):
        return crop_images(self.decoder(self.post_quant_conv(z_q)), self.pad)

    def decode(self, z):
        """x̃ [B, H, W, C] from z_e (or any latent): quantised to the nearest codes, then decoded."""
        return self.decode_quantized(self.quantize(z)[0])

    def __call__(self, x, key: Optional[jax.Array] = None):
        z_st, aux = self.quantize(self.encode(x))
        return self.decode_quantized(z_st), aux
