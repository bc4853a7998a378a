"""unCLIP's hooks for the general glue (Ramesh et al. 2022): a prior that diffuses CLIP image
embeddings, and a decoder conditioned on them."""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import ml_collections

from experiments.protocol import System
from experiments.unclip import stage_runs


def check(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """``stage_runs.check`` for an unCLIP stage; a prior's records are embeddings, never flipped."""
    if c.model.kind not in stage_runs.KINDS:
        return
    stage_runs.check(c)
    if c.data.random_flip and c.model.kind == stage_runs.PRIOR:
        raise ValueError("config: data.random_flip mirrors images left–right, but this run trains on CLIP image "
                         "embeddings (an unCLIP prior): set data.random_flip=False")


def data_shape(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """A prior's x_0 is a CLIP image embedding [E] (unCLIP §2.2); None for any other run."""
    return (stage_runs.embed_dim(c),) if c.model.kind == stage_runs.PRIOR else None


def make_model(c: ml_collections.ConfigDict, out_channels: int, shape: tuple, load_frozen: bool = True):
    """A prior's transformer over its frozen CLIP's text side (``stage_runs.make_prior``)."""
    return stage_runs.make_prior(c, out_channels, load_frozen) if c.model.kind == stage_runs.PRIOR else None


def is_decoder(c: ml_collections.ConfigDict) -> bool:
    return c.model.kind == stage_runs.DECODER


def unet_fields(c: ml_collections.ConfigDict) -> Optional[dict]:
    """A decoder's U-Net attends to ``unclip.embedding_tokens`` tokens projected from z_i (unCLIP §2.1)."""
    return {"vector_tokens": c.unclip.embedding_tokens} if is_decoder(c) else None


def init_inputs(c: ml_collections.ConfigDict) -> Optional[dict]:
    """The image embedding [1, E] that shapes a decoder's projections at init."""
    return {"cond_vector": jnp.zeros((1, stage_runs.embed_dim(c)))} if is_decoder(c) else None


def training_condition(c: ml_collections.ConfigDict, schedule):
    """A decoder's per-batch condition: each image's CLIP embedding (``stage_runs.make_condition``)."""
    return stage_runs.make_condition(c) if is_decoder(c) else None


def transforms_records(c: ml_collections.ConfigDict) -> bool:
    """A prior's split is embedded whole by the frozen CLIP before training."""
    return c.model.kind == stage_runs.PRIOR


SYSTEM = System("unclip", check=check, data_shape=data_shape, model_kinds=stage_runs.KINDS, make_model=make_model,
                unet_fields=unet_fields, init_inputs=init_inputs, training_condition=training_condition,
                transforms_records=transforms_records)
