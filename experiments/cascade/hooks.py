"""Cascaded diffusion's hooks for the general glue (Ho et al. 2021, CDM): a super-resolution stage
(``data.low_resolution``) is conditioned on a lower stage's output, augmented during training."""
from __future__ import annotations

from functools import partial
from typing import Optional

import jax.numpy as jnp
import ml_collections

from diffusion.cascade import augmentation
from experiments import field_checks
from experiments.protocol import System


def check(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """Refuse a cascade stage that cannot run: augmentation settings without a super-resolution stage
    (``data.low_resolution``), a low resolution that does not divide the image size, latents or a
    non-U-Net, levels s outside [0, T), an empty σ range or an even blur kernel."""
    a, low, size, T = c.cascade, c.data.low_resolution, c.data.image_size, c.diffusion.num_steps
    field_checks.choice("cascade.augmentation", a.augmentation, augmentation.AUGMENTATIONS)
    if not low:
        if a.augmentation != "none" or a.truncated:
            raise ValueError(f"config: cascade.augmentation={a.augmentation!r} / cascade.truncated augment a super-resolution "
                             "stage's low-resolution input: set data.low_resolution (e.g. 14), or leave them at 'none' / False")
        return
    if not field_checks.is_integer(low) or not 1 <= low < size or size % low:
        raise ValueError(f"config field data.low_resolution={low!r} must be an integer in [1, {size}) that divides "
                         f"data.image_size={size} (the low-resolution image is an average of whole blocks)")
    if c.data.autoencoder or c.model.kind != "unet":
        raise ValueError("config: a super-resolution stage (data.low_resolution) is a pixel U-Net: set model.kind='unet' "
                         "and data.autoencoder=''")
    if a.augmentation == "gaussian":
        lo, hi = a.aug_level_range
        augmentation.check_level(lo, T, "config field cascade.aug_level_range[0]")
        augmentation.check_level(hi, T, "config field cascade.aug_level_range[1]")
        if lo > hi:
            raise ValueError(f"config field cascade.aug_level_range={tuple(a.aug_level_range)} must be (low, high) with low <= high")
        augmentation.check_level(a.aug_level, T, "config field cascade.aug_level", trained=(lo, hi))
    elif a.aug_level or a.truncated:
        raise ValueError(f"config: cascade.aug_level / cascade.truncated are levels of Gaussian augmentation; with "
                         f"cascade.augmentation={a.augmentation!r} set them to 0 / False (or use 'gaussian')")
    if a.augmentation == "blur":
        lo, hi = a.blur_sigma_range
        if not 0 < lo <= hi:
            raise ValueError(f"config field cascade.blur_sigma_range={tuple(a.blur_sigma_range)} must be (low, high) with "
                             "0 < low <= high")
        if not field_checks.is_integer(a.blur_kernel) or a.blur_kernel < 1 or a.blur_kernel % 2 == 0:
            raise ValueError(f"config field cascade.blur_kernel={a.blur_kernel!r} must be an odd integer >= 1 (CDM: 3)")
        if not 0 < a.blur_fraction <= 1:
            raise ValueError(f"config field cascade.blur_fraction={a.blur_fraction!r} is the share of training examples "
                             "blurred: a number in (0, 1] (CDM: 0.5)")


def init_inputs(c: ml_collections.ConfigDict) -> Optional[dict]:
    """A super-resolution stage's conditioning inputs (one example), which shape its U-Net's conv_in
    and its s-embedding at init."""
    if not c.data.low_resolution:
        return None
    low = jnp.zeros((1, c.data.low_resolution, c.data.low_resolution, c.data.channels))
    return augmentation.conditioning(low, c.data.image_size, 0 if c.cascade.augmentation == "gaussian" else None)


def training_condition(c: ml_collections.ConfigDict, schedule):
    """A super-resolution stage's per-batch condition: its images' low resolution, augmented as the
    config says (``augmentation.training_condition``)."""
    if not c.data.low_resolution:
        return None
    a = c.cascade
    return partial(augmentation.training_condition, low=c.data.low_resolution, augmentation=a.augmentation,
                   schedule=schedule, level_range=tuple(a.aug_level_range), sigma_range=tuple(a.blur_sigma_range),
                   kernel_size=a.blur_kernel, blur_fraction=a.blur_fraction)


SYSTEM = System("cascade", check=check, init_inputs=init_inputs, training_condition=training_condition)
