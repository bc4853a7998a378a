"""From a config to the library's typed objects: validation, model and its parameters, schedule,
loss, optimizer, data, conditioning and sampler settings.

Every entry point goes through here, so a bad config fails before any work, naming the field.
"""
from __future__ import annotations

import math
from typing import Optional

import jax.numpy as jnp
import ml_collections

from diffusion import gaussian, losses, reverse, samplers, schedules, timestep_sampling, training
from diffusion.cascade import augmentation
from diffusion.data import datasets
from diffusion.models.classifier import ImageClassifier
from diffusion.models.conditioning import ClassTokens
from diffusion.models.layers import ATTENTION_IMPLEMENTATIONS
from diffusion.models.mlp import MLPDenoiser
from diffusion.models.unet import NoisyClassifier, UNet
from diffusion.sddpm import process
from experiments import field_checks, systems

UNET_FIELDS = ("base_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "dropout",
               "num_heads", "num_head_channels", "resblock_updown", "scale_shift_norm", "rescale_residual",
               "scale_skip", "efficient", "num_classes", "context_dim", "norm_groups", "remat",
               "attention_implementation")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CLIPS = ("none", "static", "dynamic")   # x̂_0 thresholding, one spelling in configs and flags (None in the library)
CONTEXT_ENCODERS = ("", "class_tokens") + systems.context_encoders()  # τθ of the U-Net's cross-attention


# Config counts that must be integers >= 1, with what a smaller value would do where that is not obvious.
COUNT_FIELDS = {"train.batch_size": "", "train.num_steps": "", "train.log_every": "", "train.sample_every": "",
                "train.checkpoint_every": "", "sample.num": "", "parallel.fsdp": "",
                "optim.grad_accum_steps": " (1 applies every batch at once)",
                "train.keep_checkpoints": " (it keeps that many of the newest checkpoints; 0 would delete them all)"}


def check_flags_at_least(minimum: int, **flags):
    """Refuse command-line counts (``--num``, ``--batch``, …) below ``minimum``, naming the flag."""
    for name, value in flags.items():
        if not field_checks.is_integer(value) or value < minimum:
            raise ValueError(f"--{name}={value!r} must be an integer >= {minimum}")


def validate(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """Raise ValueError naming the first unknown name or impossible combination; a latent config is
    checked against ``autoencoder``, its first stage's config, when that is not trained yet (a
    study's plan), else against the run at ``data.autoencoder``."""
    check_choices(c)
    check_process(c)
    check_model_and_data(c)
    check_counts(c)
    samplers.check_steps(c.sample.sampler, c.sample.steps, c.diffusion.num_steps, what="config field sample.steps")
    check_sampler_reads_model(c, c.sample.sampler, c.sample.steps, c.diffusion.num_steps, what="config field sample.")
    systems.check(c, autoencoder)
    check_clip(c, c.sample.clip, "config field sample.clip")
    if not c.data.source.startswith("toy:"):   # the U-Net and the autoencoders check the image size fits their levels
        make_model(c, load_frozen=False, autoencoder=autoencoder)


def check_choices(c: ml_collections.ConfigDict):
    """Refuse a field whose value is none of the names the library offers."""
    d, m = c.diffusion, c.model
    field_checks.choice("diffusion.schedule", d.schedule, schedules.BETA_SCHEDULES)
    field_checks.choice("diffusion.prediction", d.prediction, gaussian.PREDICTIONS + (process.RESIDUAL,))
    field_checks.choice("diffusion.variance", d.variance, reverse.VARIANCES)
    field_checks.choice("diffusion.loss", d.loss, losses.LOSSES)
    field_checks.choice("diffusion.weighting", d.weighting, ("", "min_snr", "p2"))
    field_checks.choice("diffusion.timestep_sampler", d.timestep_sampler, timestep_sampling.SAMPLERS)
    field_checks.choice("diffusion.decoder", d.decoder, losses.DECODERS)
    field_checks.choice("model.kind", m.kind, ("unet", "mlp") + systems.model_kinds())
    field_checks.choice("model.context_encoder", m.context_encoder, CONTEXT_ENCODERS)
    field_checks.choice("data.crop", c.data.crop, ("",) + tuple(datasets.CROPS))
    field_checks.choice("model.attention_implementation", m.attention_implementation, ATTENTION_IMPLEMENTATIONS)
    field_checks.choice("train.compute_dtype", c.train.compute_dtype, DTYPES)
    field_checks.choice("sample.sampler", c.sample.sampler, samplers.SAMPLERS)
    field_checks.choice("sample.clip", c.sample.clip, CLIPS)
    field_checks.choice("sample.spacing", c.sample.spacing, ("",) + schedules.SPACING_NAMES)
    field_checks.choice("optim.optimizer", c.optim.optimizer, ("adam", "adamw"))
    field_checks.choice("optim.decay", c.optim.decay, training.DECAYS)
    field_checks.choice("classifier.kind", c.classifier.kind, ("cnn", "noisy"))


def check_process(c: ml_collections.ConfigDict):
    """Refuse diffusion, sampling and optimizer settings that contradict one another."""
    d = c.diffusion
    if c.sample.clip_max and (c.sample.clip_max < 1 or c.sample.clip != "dynamic"):
        raise ValueError(f"sample.clip_max={c.sample.clip_max!r} bounds the dynamic threshold s >= 1: it needs "
                         "sample.clip='dynamic' and a value >= 1 (0 leaves s unbounded)")
    if c.optim.decay == "cooldown":
        training.check_cooldown(warmup_steps=c.optim.warmup_steps, total_steps=c.train.num_steps,
                                cooldown_steps=c.optim.cooldown_steps, prefix="config: optim.")
    elif c.optim.cooldown_steps:
        raise ValueError(f"config: optim.cooldown_steps={c.optim.cooldown_steps} is read only with optim.decay="
                         f"'cooldown' (it is {c.optim.decay!r}): set optim.decay=cooldown, or optim.cooldown_steps=0")
    losses.check_loss_variance(d.loss, d.variance, field_prefix="diffusion.")
    if d.zero_terminal_snr and d.prediction == "eps":
        raise ValueError("config: diffusion.zero_terminal_snr makes the last step pure noise, where ε-prediction "
                         "cannot recover x_0; set diffusion.prediction='v' (Lin et al. 2024) or 'x0'")
    if d.timestep_sampler == "importance" and d.loss == "simple":
        raise ValueError("config: diffusion.timestep_sampler='importance' samples L_VLB; use diffusion.loss 'vlb' or 'hybrid'")
    if d.num_steps < 1:
        raise ValueError(f"config field diffusion.num_steps={d.num_steps} must be >= 1")


def check_model_and_data(c: ml_collections.ConfigDict):
    """Refuse a model that does not fit its data or its conditioning."""
    m = c.model
    if c.data.workers < 0 or c.data.read_threads < 1:
        raise ValueError(f"config: data.workers={c.data.workers} (grain worker processes) must be >= 0 and "
                         f"data.read_threads={c.data.read_threads} >= 1")
    if c.data.class_dropout > 0 and m.num_classes == 0:
        raise ValueError("config: data.class_dropout > 0 needs a class-conditional model (model.num_classes > 0)")
    if m.num_classes > c.data.num_classes:
        raise ValueError(f"config: model.num_classes={m.num_classes} exceeds data.num_classes={c.data.num_classes}")
    if m.context_encoder == "class_tokens" and not (m.num_classes > 0 and m.context_dim > 0
                                                    and field_checks.is_integer(m.context_tokens) and m.context_tokens >= 1):
        raise ValueError(f"config: model.context_encoder={m.context_encoder!r} turns each label into model.context_tokens "
                         "tokens of model.context_dim channels: it needs model.num_classes > 0, model.context_dim > 0 "
                         "and model.context_tokens >= 1")
    if m.context_dim > 0 and not m.context_encoder and "vector_tokens" not in systems.merged("unet_fields", c):
        raise ValueError(f"config: model.context_dim={m.context_dim} adds cross-attention to a context that no domain "
                         "encoder makes: set model.context_encoder='class_tokens', 'text' or 'clip_text' (or "
                         "model.context_dim=0)")
    is_toy = c.data.source.startswith("toy:")
    if is_toy != (m.kind == "mlp"):
        raise ValueError(f"config: model.kind={m.kind!r} does not fit data.source={c.data.source!r} "
                         "(2-D toy data take the 'mlp', images the 'unet' or an autoencoder)")
    if is_toy and c.diffusion.decoder != "gaussian":
        raise ValueError("config: toy data are continuous; set diffusion.decoder='gaussian'")
    if c.data.random_flip and is_toy:   # the pipeline flips [H, W, C] records
        raise ValueError("config: data.random_flip mirrors images left–right, but this run trains on 2-D points: "
                         "set data.random_flip=False")


def check_counts(c: ml_collections.ConfigDict):
    """Refuse counts and rates outside their ranges (``COUNT_FIELDS``, milestones, evaluation, lr)."""
    for field, why in COUNT_FIELDS.items():
        section, name = field.split(".")
        if not field_checks.is_integer(c[section][name]) or c[section][name] < 1:
            raise ValueError(f"config field {field}={c[section][name]!r} must be an integer >= 1{why}")
    if not field_checks.is_integer(c.train.keep_period) or c.train.keep_period < 0:
        raise ValueError(f"config field train.keep_period={c.train.keep_period!r} must be an integer >= 0 "
                         "(0: no milestones; n: checkpoints at multiples of n are never deleted)")
    if not field_checks.is_integer(c.train.eval_every) or c.train.eval_every < 0:
        raise ValueError(f"config field train.eval_every={c.train.eval_every!r} must be an integer >= 0 "
                         "(0: no held-out evaluation during training)")
    if not (math.isfinite(c.optim.lr) and c.optim.lr > 0):
        raise ValueError(f"config field optim.lr={c.optim.lr!r} must be a finite number > 0")


def super_resolution_inputs(c: ml_collections.ConfigDict, schedule, key, z, level: Optional[int] = None,
                            truncated: bool = False) -> dict:
    """A super-resolution stage's network inputs at sampling for the lower stage's output z
    [B, h, w, C] (``cascade.conditioning``): with Gaussian augmentation z is corrupted to z_s at
    ``level`` (default ``cascade.aug_level``), unless ``truncated`` (z is already z_s); without, z is
    given as it is (CDM does not blur at sampling)."""
    if c.cascade.augmentation != "gaussian":
        return augmentation.conditioning(z, c.data.image_size)
    level = c.cascade.aug_level if level is None else level
    return augmentation.conditioning(z if truncated else augmentation.corrupt(schedule, z, level, key), c.data.image_size, level)


def make_condition(c: ml_collections.ConfigDict, schedule):
    """``training.train_step``'s per-batch ``condition`` where a system gives one (a super-resolution
    stage's augmented low resolution, an unCLIP decoder's CLIP embeddings), else None."""
    return systems.first("training_condition", c, schedule)


def check_clip(c: ml_collections.ConfigDict, clip: str, what: str):
    """Refuse thresholding x̂_0 to the pixels' [−1, 1] when the run diffuses unit-variance latents."""
    if c.data.autoencoder and clip != "none":
        raise ValueError(f"{what}={clip!r} clips x̂_0 to the pixels' [−1, 1], but this run diffuses unit-variance "
                         "latents (data.autoencoder), which exceed it: use 'none' (as LDM does)")


def check_sampler_reads_model(c: ml_collections.ConfigDict, sampler: str, steps: int, num_steps: int, what: str = ""):
    """Refuse a sampler that would misread the network: only the 'sddpm' sampler reads the SDDPM's
    residual (diffusion.prediction='residual'), only in all T steps, and it reads nothing else."""
    process.check_sampler(c.diffusion.prediction, sampler, prediction_field="diffusion.prediction",
                        sampler_field=f"{what}sampler")
    if sampler == process.SAMPLER:
        process.check_steps(steps, num_steps, field=f"{what}steps")


def make_model(c: ml_collections.ConfigDict, *, load_frozen: bool = True,
               autoencoder: Optional[ml_collections.ConfigDict] = None):
    """The denoiser ``c`` describes. A 'clip_text' U-Net's frozen text tower (an unCLIP prior's frozen
    CLIP) is read from the CLIP run's checkpoint, unless ``load_frozen`` is False (the network built
    only to check its shapes); ``autoencoder``: as for ``data_shape``."""
    shape = data_shape(c, autoencoder)
    out = reverse.output_channels(shape[-1], c.diffusion.variance)
    m = c.model
    model = systems.first("make_model", c, out, shape, load_frozen)
    if model is not None:
        return model
    if m.kind == "mlp":
        return MLPDenoiser(out_features=out, hidden=m.hidden, depth=m.depth, num_classes=m.num_classes,
                           dropout=m.dropout)
    if m.context_encoder == "class_tokens":   # the labels reach the U-Net through τθ, not a class embedding
        tau = ClassTokens(num_classes=m.num_classes, num_tokens=m.context_tokens, dim=m.context_dim)
        return UNet(out_channels=out, context_encoder=tau, **dict(_unet_fields(c, shape), num_classes=0))
    return UNet(out_channels=out, context_encoder=systems.first("context_encoder", c, load_frozen),
                **_unet_fields(c, shape))


def _unet_fields(c: ml_collections.ConfigDict, shape: tuple) -> dict:
    """The U-Net's constructor arguments for ``c``'s model on x_0 of ``shape`` (``data_shape``)."""
    fields = {k: c.model[k] for k in UNET_FIELDS}
    fields["channel_mult"] = tuple(fields["channel_mult"])
    fields["attention_resolutions"] = tuple(fields["attention_resolutions"])
    if not isinstance(fields["num_res_blocks"], int):
        fields["num_res_blocks"] = tuple(fields["num_res_blocks"])
    return {**fields, "image_size": shape[0], "dtype": DTYPES[c.train.compute_dtype], "vector_tokens": 0,
            **systems.merged("unet_fields", c)}


def make_classifier(c: ml_collections.ConfigDict):
    """The feature classifier (``classifier.kind='cnn'``) or ADM's noisy classifier ('noisy'), whose
    encoder is the U-Net described by the ``model`` section."""
    if c.classifier.kind == "cnn":
        return ImageClassifier(num_classes=c.data.num_classes, features=c.classifier.features,
                               dropout=c.classifier.dropout)
    return NoisyClassifier(num_labels=c.data.num_classes, **dict(_unet_fields(c, data_shape(c)), num_classes=0))


def data_shape(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None) -> tuple:
    """The shape of one x_0 the model diffuses: a 2-D point, an image, or what a system decides (the
    latent z = ℰ(x) of a latent run's autoencoder, whose config is ``autoencoder`` when given, before
    it is trained; an unCLIP prior's CLIP image embedding)."""
    if c.model.kind == "mlp":
        return (2,)
    shape = systems.first("data_shape", c, autoencoder)
    return shape if shape is not None else (c.data.image_size, c.data.image_size, c.data.channels)


def conditioning(c: ml_collections.ConfigDict, condition) -> Optional[dict]:
    """The network's conditioning arguments for ``condition`` (``condition_of``'s rows): a system's
    (a text-conditioned model's ``{"tokens": …}``), else ``{"labels": …}`` for a class-conditional
    model and None for an unconditional one."""
    cond = systems.first("conditioning", c, condition)
    if cond is not None:
        return cond
    return {"labels": condition} if c.model.num_classes else None


def condition_of(c: ml_collections.ConfigDict, split: datasets.Split):
    """Each example's condition as ``conditioning`` takes it: a system's (a text-conditioned run's
    caption token ids [N, L]), else its label [N]."""
    condition = systems.first("condition_of", c, split)
    return split.labels if condition is None else condition


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
    check_clip(c, clip, "clip")
    return samplers.plan(name, schedule, steps, spacing=c.sample.spacing if spacing is None else spacing,
                         eta=c.sample.eta if eta is None else eta, clip=None if clip == "none" else clip,
                         clip_max=c.sample.clip_max or None, **output_kwargs(c))


def init_params(model, config, key):
    """The denoiser's initial parameters, from one example of the data's shape and of each input that
    shapes parameters (the condition, and what systems add: a low-resolution image, an embedding)."""
    example = systems.first("example_condition", config)
    cond = conditioning(config, jnp.zeros((1,), jnp.int32) if example is None else example) or {}
    cond.update(systems.merged("init_inputs", config))
    return model.init(key, jnp.zeros((1,) + data_shape(config)), jnp.zeros((1,), jnp.int32), **cond)["params"]


def make_denoiser(model, params, train: bool = False):
    """``model_fn(x_t, timesteps, **cond)`` for the library's samplers and likelihood."""
    return lambda x, ts, **cond: model.apply({"params": params}, x, ts, train=train, **cond)


def _schedule_settings(config: ml_collections.ConfigDict) -> dict:
    o = config.optim
    return dict(lr=o.lr, warmup_steps=o.warmup_steps, decay=o.decay, total_steps=config.train.num_steps,
                cooldown_steps=o.cooldown_steps)


def learning_rate_schedule(config: ml_collections.ConfigDict):
    """Optimizer step → the learning rate ``make_optimizer`` applies at it (what a run logs as ``lr``)."""
    return training.learning_rate_schedule(**_schedule_settings(config))


def make_optimizer(config: ml_collections.ConfigDict):
    """``training.make_optimizer`` with the config's ``optim`` settings over ``train.num_steps``."""
    o = config.optim
    return training.make_optimizer(
        **_schedule_settings(config), optimizer=o.optimizer, b1=o.b1, b2=o.b2, eps=o.eps,
        weight_decay=o.weight_decay, grad_clip=o.grad_clip,
        accum_steps=o.grad_accum_steps)


def load_data(config, labels_used: Optional[bool] = None):
    """(train, held-out) splits of ``data.source``, checked against ``data.channels`` and, where the
    labels are used (``labels_used``; default: a class-conditional model), ``data.num_classes``."""
    splits = datasets.load_splits(config.data.source, image_size=config.data.image_size,
                                  holdout_fraction=config.data.holdout_fraction, seed=config.seed,
                                  tfds_data_dir=config.data.tfds_data_dir, crop=config.data.crop)
    labels_used = config.model.num_classes > 0 or bool(config.data.captions) if labels_used is None else labels_used
    for split in splits:
        datasets.check_split(split, channels=config.data.channels, source=config.data.source,
                             num_classes=config.data.num_classes if labels_used else None)
    prepared = systems.first("prepare_splits", config, splits)
    return splits if prepared is None else prepared


def streams_training_records(config) -> bool:
    """Whether a run only streams its training records, so that they can be read lazily: a TFDS
    source whose split no system transforms whole first (as latents are encoded once, captions
    measured on every image, an unCLIP prior's CLIP embeddings computed)."""
    return config.data.source.startswith("tfds:") and not systems.any_system("transforms_records", config)


def training_data(config, labels_used: Optional[bool] = None):
    """``load_data``'s (train, held-out) splits of a run's data, for training it or evaluating it,
    read lazily (``datasets.load_training_splits``: no set held in memory whole) where the run only
    streams its records (``streams_training_records``), and checked as ``load_data`` checks them, from
    each split's first record and its set's number of classes (``datasets.check_record_split``). A lazy
    split is read through ``rows``/``head`` only (``scoring.feature_chunks`` for statistics)."""
    if not streams_training_records(config):
        return load_data(config, labels_used)
    splits = datasets.load_training_splits(config.data.source, image_size=config.data.image_size,
                                           holdout_fraction=config.data.holdout_fraction, seed=config.seed,
                                           tfds_data_dir=config.data.tfds_data_dir, crop=config.data.crop)
    labels_used = config.model.num_classes > 0 if labels_used is None else labels_used
    for split in splits:
        datasets.check_record_split(split, channels=config.data.channels, source=config.data.source,
                                    num_classes=config.data.num_classes if labels_used else None)
    return splits


def grid_condition(c: ml_collections.ConfigDict, n: int):
    """What a run's training grids are drawn for: a system's (a text-conditioned run's class prompts in
    turn, "the digit 7", as token ids [n, L]), else the classes in turn."""
    condition = systems.first("grid_condition", c, n)
    return jnp.arange(n, dtype=jnp.int32) % max(c.model.num_classes, 1) if condition is None else condition
