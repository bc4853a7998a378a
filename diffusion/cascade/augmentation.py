"""Cascaded diffusion with conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models for
High Fidelity Image Generation", CDM).

A super-resolution stage p_θ(x | z) sees the low-resolution image z upsampled to its own size and
concatenated to x_t. In training z is made from the same batch (``low_resolution``, then
``upsample``) and corrupted (CDM §3): Gaussian augmentation z_s ~ q(z_s | z_0) at a level s drawn
per example, which the network is told, or Gaussian blur of random σ. At sampling z is the lower
stage's output, fed either non-truncated (run to 0, then corrupted to z_s by ``corrupt``) or
truncated (the lower stage's reverse process stopped at s: ``truncate``). Levels s are indices of
the super-resolution stage's schedule, the same indices as t (``gaussian.q_sample``'s).
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from diffusion import gaussian
from diffusion.schedules import respace, Schedule

AUGMENTATIONS = ("none", "gaussian", "blur")


def check_level(s, num_steps: int, what: str = "aug_level", trained=None):
    """Refuse an augmentation level outside the schedule's indices [0, T) or, given the ``trained``
    (low, high) range of a stage, outside the levels its s-embedding saw in training."""
    if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or not 0 <= s < num_steps:
        raise ValueError(f"{what}={s!r} must be an integer schedule index in [0, {num_steps}) (T = {num_steps})")
    if trained is not None and not trained[0] <= s <= trained[1]:
        raise ValueError(f"{what}={s} is outside the levels [{trained[0]}, {trained[1]}] the stage was trained on "
                         "(cascade.aug_level_range): its level embedding never saw it; choose s in that range")


def low_resolution(x, size: int):
    """x [B, H, W, C] → [B, size, size, C] by averaging each (H/size)² block: the area filter of
    ``datasets.resize_images``, so a base stage trained at ``size`` sees the images a
    super-resolution stage is conditioned on (to uint8 rounding). H must be a multiple of size."""
    B, H, W, C = x.shape
    if H % size or W % size:
        raise ValueError(f"a {H}×{W} image does not shrink to {size}×{size} by whole blocks: use a low resolution "
                         f"that divides {H}")
    f = H // size
    return x.reshape(B, size, f, size, f, C).mean(axis=(2, 4))


def upsample(z, size: int):
    """The conditioning image: z [B, h, w, C] resized bicubically to [B, size, size, C] (SR3's and
    CDM's upsampling of the low-resolution input), in training and at sampling alike."""
    return jax.image.resize(z, (z.shape[0], size, size, z.shape[-1]), "bicubic")


def conditioning(z, size: int, level=None) -> dict:
    """A super-resolution stage's network inputs for the (augmented) low-resolution z [B, h, w, C]:
    ``cond_image`` (z upsampled to ``size``) and, for Gaussian augmentation, ``aug_level`` int[B]."""
    cond = {"cond_image": upsample(z, size)}
    if level is not None:
        cond["aug_level"] = jnp.broadcast_to(jnp.asarray(level, jnp.int32), (z.shape[0],))
    return cond


def corrupt(schedule: Schedule, z0, s, key):
    """z_s ~ q(z_s | z_0) = N(√ᾱ_s z_0, (1 − ᾱ_s) I): Gaussian conditioning augmentation at level s
    (scalar or int[B]), and the non-truncated form at sampling (CDM §3.3: z_0 from the lower stage run
    to the end, then corrupted)."""
    s = jnp.broadcast_to(jnp.asarray(s, jnp.int32), (z0.shape[0],))
    return gaussian.q_sample(schedule, z0, s, jax.random.normal(key, z0.shape, z0.dtype))


def gaussian_augment(keys, schedule: Schedule, z0, level_range):
    """(z_s, s): per example a level s ~ U{lo … hi} and z_s ~ q(z_s | z_0) (CDM §3, Gaussian
    augmentation), one key each (keys [B]), so a batch's draws do not depend on how it is split."""
    lo, hi = level_range
    s = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 0), (), lo, hi + 1))(keys)
    noise = jax.vmap(lambda k, z: jax.random.normal(jax.random.fold_in(k, 1), z.shape, z.dtype))(keys, z0)
    return gaussian.q_sample(schedule, z0, s, noise), s


def blur_kernel(sigma, size: int):
    """A size×size Gaussian kernel of width σ, normalised to sum to 1 (size odd)."""
    r = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    g = jnp.exp(-0.5 * (r / sigma) ** 2)
    k = jnp.outer(g, g)
    return k / k.sum()


def blur(z, sigma, size: int):
    """z [h, w, C] convolved channel by channel with ``blur_kernel(σ, size)``, edges replicated."""
    pad = size // 2
    padded = jnp.pad(z, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    kernel = jnp.tile(blur_kernel(sigma, size)[:, :, None, None], (1, 1, 1, z.shape[-1]))
    out = jax.lax.conv_general_dilated(padded[None], kernel.astype(z.dtype), (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=z.shape[-1])
    return out[0]


def blur_augment(keys, z0, sigma_range, size: int, fraction: float = 1.0):
    """(augmented z, σ): per example, with probability ``fraction``, a Gaussian blur of z_0 of width
    σ ~ U[σ_lo, σ_hi], else z_0 itself (σ reported 0) — CDM §3.1's blurring augmentation of the
    conditioning input, which blurs half of the training examples (``fraction`` 0.5) and never blurs
    at sampling. One key each (keys [B])."""
    lo, hi = sigma_range
    sigma = jax.vmap(lambda k: jax.random.uniform(k, (), minval=lo, maxval=hi))(keys)
    chosen = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 1), fraction))(keys)
    blurred = jax.vmap(lambda z, s: blur(z, s, size))(z0, sigma)
    return jnp.where(chosen[:, None, None, None], blurred, z0), jnp.where(chosen, sigma, 0.0)


def training_condition(keys, x0, *, low: int, augmentation: str, schedule: Schedule, level_range=(0, 0),
                       sigma_range=(0.0, 0.0), kernel_size: int = 3, blur_fraction: float = 1.0) -> dict:
    """The super-resolution network's inputs for a batch x0 [B, H, W, C]: its own low-resolution
    version (``low_resolution``), augmented (``augmentation``: "none", "gaussian", "blur") and
    upsampled (``conditioning``). keys [B]: one per example."""
    z0 = low_resolution(x0, low)
    if augmentation == "gaussian":
        z, s = gaussian_augment(keys, schedule, z0, level_range)
        return conditioning(z, x0.shape[1], s)
    if augmentation == "blur":
        z0 = blur_augment(keys, z0, sigma_range, kernel_size, blur_fraction)[0]
    return conditioning(z0, x0.shape[1])


def truncate(schedule: Schedule, run_schedule: Schedule, timesteps, s: int, respaced: bool):
    """(run schedule, descending timesteps, end level) that stop a sampler's reverse process at level
    s of ``schedule`` instead of 0: truncated conditioning augmentation (CDM §3.2), whose last state is
    a draw of p_θ(z_s). ``run_schedule`` and ``timesteps`` are ``samplers.plan``'s; a ``respaced``
    sampler (one index of its own schedule a step) gets s added to its kept steps, so its chain
    passes through ᾱ_s exactly. Pass the end level to ``samplers.sample(t_end=...)``."""
    check_level(s, schedule.num_steps, "truncation level s")
    if not respaced:
        kept = np.asarray(timesteps)
        return run_schedule, jnp.asarray(kept[kept > s], jnp.int32), s
    kept = np.union1d(np.asarray(run_schedule.timesteps), [s])
    run_schedule = respace(schedule, kept)
    j = int(np.searchsorted(kept, s))
    return run_schedule, jnp.arange(len(kept) - 1, j, -1, dtype=jnp.int32), j
