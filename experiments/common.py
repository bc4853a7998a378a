"""From a config to the library's typed objects: validation, model and its parameters, schedule,
loss, optimizer, data, conditioning and sampler settings.

Every entry point goes through here, so a bad config fails before any work, naming the field.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import jax.numpy as jnp
import ml_collections

from diffusion import gaussian, losses, reverse, samplers, schedules, sddpm, training
from diffusion.data import datasets
from diffusion.models.sddpm_autoencoders import AUTOENCODERS, ConvAutoencoder
from diffusion.models.mlp import MLPDenoiser
from diffusion.models.classifier import ImageClassifier
from diffusion.models.layers import ATTENTION_IMPLEMENTATIONS
from diffusion.models.unet import NoisyClassifier, UNet

UNET_FIELDS = ("base_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "dropout",
               "num_heads", "num_head_channels", "resblock_updown", "scale_shift_norm", "rescale_residual",
               "scale_skip", "efficient", "num_classes", "context_dim", "norm_groups", "remat",
               "attention_implementation")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CLIPS = ("none", "static", "dynamic")   # x̂_0 thresholding, one spelling in configs and flags (None in the library)


def _choice(field: str, value, allowed):
    if value not in allowed:
        raise ValueError(f"config field {field}={value!r} is not one of {sorted(map(str, allowed))}")


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# Config counts that must be integers >= 1, with what a smaller value would do where that is not obvious.
COUNT_FIELDS = {"train.batch_size": "", "train.num_steps": "", "train.log_every": "", "train.sample_every": "",
                "train.checkpoint_every": "", "sample.num": "",
                "train.keep_checkpoints": " (it keeps that many of the newest checkpoints; 0 would delete them all)"}


def check_flags_at_least(minimum: int, **flags):
    """Refuse command-line counts (``--num``, ``--batch``, …) below ``minimum``, naming the flag."""
    for name, value in flags.items():
        if not _is_integer(value) or value < minimum:
            raise ValueError(f"--{name}={value!r} must be an integer >= {minimum}")


def validate(c: ml_collections.ConfigDict):
    """Raise ValueError naming the first unknown name or impossible combination."""
    d, m = c.diffusion, c.model
    _choice("diffusion.schedule", d.schedule, schedules.BETA_SCHEDULES)
    _choice("diffusion.prediction", d.prediction, gaussian.PREDICTIONS + (sddpm.RESIDUAL,))
    _choice("diffusion.variance", d.variance, reverse.VARIANCES)
    _choice("diffusion.loss", d.loss, losses.LOSSES)
    _choice("diffusion.weighting", d.weighting, ("", "min_snr", "p2"))
    _choice("diffusion.timestep_sampler", d.timestep_sampler, ("uniform", "importance"))
    _choice("diffusion.decoder", d.decoder, losses.DECODERS)
    _choice("model.kind", m.kind, ("unet", "mlp") + tuple(AUTOENCODERS))
    _choice("model.attention_implementation", m.attention_implementation, ATTENTION_IMPLEMENTATIONS)
    _choice("train.compute_dtype", c.train.compute_dtype, DTYPES)
    _choice("sample.sampler", c.sample.sampler, samplers.SAMPLERS)
    _choice("sample.clip", c.sample.clip, CLIPS)
    _choice("sample.spacing", c.sample.spacing, ("",) + schedules.SPACING_NAMES)
    if c.sample.clip_max and (c.sample.clip_max < 1 or c.sample.clip != "dynamic"):
        raise ValueError(f"sample.clip_max={c.sample.clip_max!r} bounds the dynamic threshold s >= 1: it needs "
                         "sample.clip='dynamic' and a value >= 1 (0 leaves s unbounded)")
    _choice("optim.optimizer", c.optim.optimizer, ("adam", "adamw"))
    _choice("optim.decay", c.optim.decay, ("constant", "cosine"))
    _choice("classifier.kind", c.classifier.kind, ("cnn", "noisy"))
    losses.check_loss_variance(d.loss, d.variance, field_prefix="diffusion.")
    sddpm.check_prediction(d.loss, d.prediction, loss_field="diffusion.loss",
                           prediction_field="config field diffusion.prediction")
    if d.loss == sddpm.LOSS and d.weighting:
        raise ValueError(f"config: diffusion.weighting={d.weighting!r} reweights L_simple's MSE; diffusion.loss='sddpm' "
                         "is −log q_r with no such weight: set diffusion.weighting=''")
    if d.zero_terminal_snr and d.prediction == "eps":
        raise ValueError("config: diffusion.zero_terminal_snr makes the last step pure noise, where ε-prediction "
                         "cannot recover x_0; set diffusion.prediction='v' (Lin et al. 2024) or 'x0'")
    if d.timestep_sampler == "importance" and d.loss == "simple":
        raise ValueError("config: diffusion.timestep_sampler='importance' samples L_VLB; use diffusion.loss 'vlb' or 'hybrid'")
    if d.num_steps < 1:
        raise ValueError(f"config field diffusion.num_steps={d.num_steps} must be >= 1")
    if c.data.class_dropout > 0 and m.num_classes == 0:
        raise ValueError("config: data.class_dropout > 0 needs a class-conditional model (model.num_classes > 0)")
    if m.num_classes > c.data.num_classes:
        raise ValueError(f"config: model.num_classes={m.num_classes} exceeds data.num_classes={c.data.num_classes}")
    is_toy = c.data.source.startswith("toy:")
    if is_toy != (m.kind == "mlp"):
        raise ValueError(f"config: model.kind={m.kind!r} does not fit data.source={c.data.source!r} "
                         "(2-D toy data take the 'mlp', images the 'unet' or an autoencoder)")
    if is_toy and d.decoder != "gaussian":
        raise ValueError("config: toy data are continuous; set diffusion.decoder='gaussian'")
    for field, why in COUNT_FIELDS.items():
        section, name = field.split(".")
        if not _is_integer(c[section][name]) or c[section][name] < 1:
            raise ValueError(f"config field {field}={c[section][name]!r} must be an integer >= 1{why}")
    if not (math.isfinite(c.optim.lr) and c.optim.lr > 0):
        raise ValueError(f"config field optim.lr={c.optim.lr!r} must be a finite number > 0")
    samplers.check_steps(c.sample.sampler, c.sample.steps, d.num_steps, what="config field sample.steps")
    check_sampler_reads_model(c, c.sample.sampler, c.sample.steps, d.num_steps, what="config field sample.")
    if not is_toy:
        make_model(c)   # the U-Net and the convolutional autoencoder check that the image size fits their levels


def check_sampler_reads_model(c: ml_collections.ConfigDict, sampler: str, steps: int, num_steps: int, what: str = ""):
    """Refuse a sampler that would misread the network: only the 'sddpm' sampler reads the SDDPM's
    residual (diffusion.prediction='residual'), only in all T steps, and it reads nothing else."""
    sddpm.check_sampler(c.diffusion.prediction, sampler, prediction_field="diffusion.prediction",
                        sampler_field=f"{what}sampler")
    if sampler == sddpm.SAMPLER:
        sddpm.check_steps(steps, num_steps, field=f"{what}steps")


def make_model(c: ml_collections.ConfigDict):
    out = reverse.output_channels(2 if c.model.kind == "mlp" else c.data.channels, c.diffusion.variance)
    m = c.model
    if m.kind == "mlp":
        return MLPDenoiser(out_features=out, hidden=m.hidden, depth=m.depth, num_classes=m.num_classes,
                           dropout=m.dropout)
    if m.kind in AUTOENCODERS:
        kw = dict(out_channels=out, code_width=m.code_width, step_embedding=m.step_embedding,
                  num_classes=m.num_classes)
        if m.kind == "conv_autoencoder":
            return ConvAutoencoder(image_size=c.data.image_size, features=tuple(m.autoencoder_features), **kw)
        if m.kind == "dense_autoencoder":
            kw["width"] = m.autoencoder_width
        return AUTOENCODERS[m.kind](image_shape=data_shape(c), **kw)
    return UNet(out_channels=out, **_unet_fields(c))


def _unet_fields(c: ml_collections.ConfigDict) -> dict:
    fields = {k: c.model[k] for k in UNET_FIELDS}
    fields["channel_mult"] = tuple(fields["channel_mult"])
    fields["attention_resolutions"] = tuple(fields["attention_resolutions"])
    if not isinstance(fields["num_res_blocks"], int):
        fields["num_res_blocks"] = tuple(fields["num_res_blocks"])
    return dict(fields, image_size=c.data.image_size, dtype=DTYPES[c.train.compute_dtype])


def make_classifier(c: ml_collections.ConfigDict):
    """The feature classifier (``classifier.kind='cnn'``) or ADM's noisy classifier ('noisy'), whose
    encoder is the U-Net described by the ``model`` section."""
    if c.classifier.kind == "cnn":
        return ImageClassifier(num_classes=c.data.num_classes, features=c.classifier.features,
                               dropout=c.classifier.dropout)
    return NoisyClassifier(num_labels=c.data.num_classes, **dict(_unet_fields(c), num_classes=0))


def data_shape(c: ml_collections.ConfigDict) -> tuple:
    if c.model.kind == "mlp":
        return (2,)
    return (c.data.image_size, c.data.image_size, c.data.channels)


def conditioning(c: ml_collections.ConfigDict, labels) -> Optional[dict]:
    """The network's conditioning arguments for ``labels``: ``{"labels": …}`` for a class-conditional
    model, None for an unconditional one."""
    return {"labels": labels} if c.model.num_classes else None


def make_schedule(c: ml_collections.ConfigDict) -> schedules.Schedule:
    return schedules.make_schedule(c.diffusion.schedule, c.diffusion.num_steps,
                                   zero_terminal=c.diffusion.zero_terminal_snr)


def output_kwargs(c: ml_collections.ConfigDict) -> dict:
    """How the network's output is read: prediction target and variance."""
    return {"prediction": c.diffusion.prediction, "variance": c.diffusion.variance}


def loss_kwargs(c: ml_collections.ConfigDict) -> dict:
    d = c.diffusion
    return dict(output_kwargs(c), loss=d.loss, hybrid_weight=d.hybrid_weight, weighting=d.weighting or None,
                min_snr_gamma=d.min_snr_gamma, p2_gamma=d.p2_gamma, p2_k=d.p2_k, decoder=d.decoder)


def make_sampler(c: ml_collections.ConfigDict, schedule, *, sampler=None, steps=None, eta=None, clip=None,
                 spacing=None):
    """``samplers.plan`` for the config's sampler settings, each overridable: (step with its
    settings bound, schedule to run on, descending timesteps)."""
    name = c.sample.sampler if sampler is None else sampler
    steps = c.sample.steps if steps is None else steps
    check_sampler_reads_model(c, name, steps, schedule.num_steps)
    clip = c.sample.clip if clip is None else clip
    return samplers.plan(name, schedule, steps, spacing=c.sample.spacing if spacing is None else spacing,
                         eta=c.sample.eta if eta is None else eta, clip=None if clip == "none" else clip,
                         clip_max=c.sample.clip_max or None, **output_kwargs(c))


def init_params(model, config, key):
    """The denoiser's initial parameters, from one example of the data's shape."""
    cond = conditioning(config, jnp.zeros((1,), jnp.int32)) or {}
    return model.init(key, jnp.zeros((1,) + data_shape(config)), jnp.zeros((1,), jnp.int32), **cond)["params"]


def make_denoiser(model, params, train: bool = False):
    """``model_fn(x_t, timesteps, **cond)`` for the library's samplers and likelihood."""
    return lambda x, ts, **cond: model.apply({"params": params}, x, ts, train=train, **cond)


def make_optimizer(config: ml_collections.ConfigDict):
    """``training.make_optimizer`` with the config's ``optim`` settings over ``train.num_steps``."""
    o = config.optim
    return training.make_optimizer(
        lr=o.lr, warmup_steps=o.warmup_steps, decay=o.decay, total_steps=config.train.num_steps,
        optimizer=o.optimizer, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, grad_clip=o.grad_clip)


def load_data(config, labels_used: Optional[bool] = None):
    """(train, held-out) splits of ``data.source``, checked against ``data.channels`` and, where the
    labels are used (``labels_used``; default: a class-conditional model), ``data.num_classes``."""
    splits = datasets.load_splits(config.data.source, image_size=config.data.image_size,
                                  holdout_fraction=config.data.holdout_fraction, seed=config.seed,
                                  tfds_data_dir=config.data.tfds_data_dir)
    labels_used = config.model.num_classes > 0 if labels_used is None else labels_used
    for split in splits:
        datasets.check_split(split, channels=config.data.channels, source=config.data.source,
                             num_classes=config.data.num_classes if labels_used else None)
    return splits
