"""Seed 004's simplified DDPM's hooks for the general glue: a Gaussian reverse step q_r fitted to
forward pairs (``diffusion.loss='sddpm'``), read from a residual (``diffusion.prediction='residual'``)
by its narrow-code autoencoders (``model.kind``)."""
from __future__ import annotations

from typing import Optional

import ml_collections

from diffusion.sddpm import process
from diffusion.sddpm.autoencoders import AUTOENCODERS, ConvAutoencoder
from experiments.protocol import System


def check(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """Refuse the SDDPM loss with a prediction it cannot read, or with L_simple's weighting."""
    d = c.diffusion
    process.check_prediction(d.loss, d.prediction, loss_field="diffusion.loss",
                             prediction_field="config field diffusion.prediction")
    if d.loss == process.LOSS and d.weighting:
        raise ValueError(f"config: diffusion.weighting={d.weighting!r} reweights L_simple's MSE; diffusion.loss='sddpm' "
                         "is −log q_r with no such weight: set diffusion.weighting=''")


def make_model(c: ml_collections.ConfigDict, out_channels: int, shape: tuple, load_frozen: bool = True):
    """One of seed 004's reverse models: a shallow, dense or convolutional autoencoder with a narrow code."""
    m = c.model
    if m.kind not in AUTOENCODERS:
        return None
    kw = dict(out_channels=out_channels, code_width=m.code_width, step_embedding=m.step_embedding,
              num_classes=m.num_classes)
    if m.kind == "conv_autoencoder":
        return ConvAutoencoder(image_size=c.data.image_size, features=tuple(m.autoencoder_features), **kw)
    if m.kind == "dense_autoencoder":
        kw["width"] = m.autoencoder_width
    return AUTOENCODERS[m.kind](image_shape=shape, **kw)


SYSTEM = System("sddpm", check=check, model_kinds=tuple(AUTOENCODERS), make_model=make_model)
