"""Latent diffusion's hooks for the general glue (Rombach et al. 2022): a run whose ``data.autoencoder``
names a trained first stage diffuses its latents z = s·ℰ(x)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import ml_collections

from diffusion.latent import networks
from experiments import runs
from experiments.protocol import System


def latent_shape(c: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(h, w, c) of the latents z = ℰ(x) of the autoencoder ``c`` describes: ((image_size + 2·pad)/f,
    …, first_stage.latent_channels)."""
    f = c.first_stage
    return networks.latent_shape(c.data.image_size, f.pad, f.factor, f.latent_channels)


def autoencoder_config(c: ml_collections.ConfigDict,
                       autoencoder: Optional[ml_collections.ConfigDict] = None) -> ml_collections.ConfigDict:
    """The first stage's config: ``autoencoder`` when given (a study's plan, before it is trained),
    else the one saved in the run at ``data.autoencoder``."""
    return autoencoder if autoencoder is not None else runs.load_config(c.data.autoencoder)


def data_shape(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """The latents' shape for a latent run, else None."""
    return latent_shape(autoencoder_config(c, autoencoder)) if c.data.autoencoder else None


def check(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """Refuse a latent-diffusion config (``data.autoencoder``) that cannot run: no autoencoder run
    there (unless its config is given as ``autoencoder``, to be trained), one trained on other
    images, latents the U-Net cannot halve at each level, attention at a side no level has,
    settings for pixels (the discretised decoder, image flips)."""
    where = c.data.autoencoder
    if not where:
        return
    if autoencoder is None and not (Path(where) / "config.json").exists():
        raise ValueError(f"config field data.autoencoder={where!r} is not an autoencoder run (no {Path(where) / 'config.json'}): "
                         f"train one first with python -m experiments.train_autoencoder --config "
                         f"configs/latent/autoencoder_kl_f4.py --workdir {where}")
    a = autoencoder_config(c, autoencoder)
    if (a.data.image_size, a.data.channels) != (c.data.image_size, c.data.channels):
        raise ValueError(f"config: the autoencoder in {where} encodes {a.data.image_size}×{a.data.image_size}×"
                         f"{a.data.channels} images, not data.image_size={c.data.image_size} × data.channels="
                         f"{c.data.channels}: use its data settings")
    if c.model.kind != "unet":
        raise ValueError(f"config: latent diffusion (data.autoencoder) runs the U-Net on z; model.kind={c.model.kind!r} "
                         "is for pixels: set model.kind='unet'")
    check_unet_fits(c, a)
    if c.diffusion.decoder != "gaussian":
        raise ValueError(f"config: diffusion.decoder={c.diffusion.decoder!r} reads 8-bit pixels; latents are "
                         "continuous: set diffusion.decoder='gaussian'")
    if c.data.random_flip:
        raise ValueError("config: data.random_flip flips images, but a latent run trains on latents encoded once "
                         "at its start: set data.random_flip=False")


def check_unet_fits(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict):
    """Refuse a U-Net that cannot halve the latents of autoencoder ``a`` at each of its levels, or that
    names attention at a side none of its levels has."""
    where = c.data.autoencoder
    h, _, channels = latent_shape(a)
    levels = len(c.model.channel_mult)
    if h % 2 ** (levels - 1):
        raise ValueError(f"config: the {h}×{h}×{channels} latents of data.autoencoder={where!r} (f = "
                         f"{a.first_stage.factor}) cannot be halved {levels - 1} times by model.channel_mult="
                         f"{tuple(c.model.channel_mult)}: give it at most {(h & -h).bit_length()} levels, or use an "
                         f"autoencoder whose latent side {2 ** (levels - 1)} divides")
    sides = [h // 2 ** i for i in range(levels)]
    unused = [r for r in c.model.attention_resolutions if r not in sides]
    if unused:
        raise ValueError(f"config: model.attention_resolutions={tuple(c.model.attention_resolutions)} names "
                         f"{unused}, which no level of the U-Net on the {h}×{h} latents has (its sides: {sides}): "
                         "attention there would silently be absent; choose among those sides")


def transforms_records(c: ml_collections.ConfigDict) -> bool:
    """A latent run's split is encoded whole once, before training."""
    return bool(c.data.autoencoder)


SYSTEM = System("latent", check=check, data_shape=data_shape, transforms_records=transforms_records)
