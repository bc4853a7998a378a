"""Text conditioning's hooks for the general glue (GLIDE, Nichol et al. 2022; Imagen, Saharia et al.
2022): captions measured on the images, read by a text encoder τθ trained with the U-Net ('text') or
a CLIP run's frozen text tower ('clip_text')."""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import ml_collections

from diffusion.data import datasets
from diffusion.text import captions
from experiments import field_checks
from experiments.protocol import System
from experiments.text import captioning, clip_runs


def check(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """Refuse a text-conditioned config that cannot run: captions without a text encoder or the
    reverse, an unknown caption domain, images captions are not measured on, a text encoder beside
    class labels, caption dropout outside [0, 1) or without captions, a CLIP run that is missing, of
    another domain or of another width than ``model.context_dim``, the held-out loss (it reads labels)."""
    m, d = c.model, c.data
    if not 0 <= c.train.caption_dropout < 1:
        raise ValueError(f"config field train.caption_dropout={c.train.caption_dropout!r} is the share of captions "
                         "replaced by the null caption: a number in [0, 1) (GLIDE: 0.2)")
    if not captioning.is_conditioned(c):
        if d.captions or c.train.caption_dropout:
            raise ValueError(f"config: data.captions={d.captions!r} / train.caption_dropout give the model captions, "
                             f"but model.context_encoder={m.context_encoder!r} reads none: set model.context_encoder="
                             "'text' (or 'clip_text'), or data.captions='' and train.caption_dropout=0")
        return
    if d.captions not in captions.DOMAINS:
        raise ValueError(f"config: model.context_encoder={m.context_encoder!r} reads captions: set data.captions to one "
                         f"of {list(captions.DOMAINS)} (got {d.captions!r})")
    if (d.image_size, d.channels) != (28, 1) or d.autoencoder or d.low_resolution:
        raise ValueError("config: captions are measured on 28×28 one-channel pixel images: data.image_size=28, "
                         "data.channels=1, no data.autoencoder or data.low_resolution")
    if m.num_classes or m.context_dim <= 0:
        raise ValueError(f"config: model.context_encoder={m.context_encoder!r} conditions on the caption alone through "
                         f"cross-attention: set model.num_classes=0 (got {m.num_classes}) and model.context_dim > 0 "
                         f"(got {m.context_dim})")
    if c.train.eval_every:
        raise ValueError("config: train.eval_every's held-out loss reads class labels, not captions: set "
                         "train.eval_every=0 for a text-conditioned run")
    if m.context_encoder == "text":
        if not (field_checks.is_integer(m.text_layers) and m.text_layers >= 1 and field_checks.is_integer(m.text_heads) and m.text_heads >= 1
                and m.context_dim % m.text_heads == 0):
            raise ValueError(f"config: model.text_layers={m.text_layers!r} and model.text_heads={m.text_heads!r} must be "
                             f"integers >= 1, the heads dividing model.context_dim={m.context_dim}")
        return
    clip = clip_runs.check_run(m.clip_run)
    if clip.clip.domain != d.captions:
        raise ValueError(f"config: the CLIP run {m.clip_run} was trained on {clip.clip.domain!r} captions, not "
                         f"data.captions={d.captions!r}")
    if m.context_dim != clip.clip.text_width:
        raise ValueError(f"config: the CLIP run {m.clip_run}'s text tower is {clip.clip.text_width} wide: set "
                         f"model.context_dim={clip.clip.text_width} (got {m.context_dim})")


def context_encoder(c: ml_collections.ConfigDict, load_frozen: bool = True):
    """τθ of the captions for a text-conditioned U-Net (``captioning.make_encoder``)."""
    return captioning.make_encoder(c, load_frozen) if captioning.is_conditioned(c) else None


def example_condition(c: ml_collections.ConfigDict):
    """The null caption's token ids [1, L], the example a text-conditioned network is built on."""
    return captioning.tokenizer_of(c).encode([""]) if captioning.is_conditioned(c) else None


def conditioning(c: ml_collections.ConfigDict, condition) -> Optional[dict]:
    """A text-conditioned network reads captions' token ids int[B, L] as ``tokens``."""
    return {"tokens": condition} if captioning.is_conditioned(c) else None


def condition_of(c: ml_collections.ConfigDict, split: datasets.Split):
    """Each example's caption as token ids [N, L], for a text-conditioned run."""
    return split.tokens if captioning.is_conditioned(c) else None


def grid_condition(c: ml_collections.ConfigDict, n: int):
    """The class prompts in turn ("the digit 7") as token ids [n, L], for a text-conditioned run."""
    if not captioning.is_conditioned(c):
        return None
    prompts = captions.class_prompts(c.data.captions)
    return jnp.asarray(captioning.tokenizer_of(c).encode([prompts[k % len(prompts)] for k in range(n)]))


def prepare_splits(c: ml_collections.ConfigDict, splits: tuple) -> Optional[tuple]:
    """Each split with its images' captions measured and tokenized (``data.captions``)."""
    return tuple(captioning.captioned(c, split) for split in splits) if c.data.captions else None


def transforms_records(c: ml_collections.ConfigDict) -> bool:
    """Captions are measured on every image of a split before training."""
    return bool(c.data.captions)


SYSTEM = System("text", check=check, context_encoders=captioning.ENCODERS, context_encoder=context_encoder,
                example_condition=example_condition, conditioning=conditioning, condition_of=condition_of,
                grid_condition=grid_condition, prepare_splits=prepare_splits, transforms_records=transforms_records)
