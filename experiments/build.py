"""From a config to the library's typed objects: validation, model and its parameters, schedule,
loss, optimizer, data, conditioning and sampler settings.

Every entry point goes through here, so a bad config fails before any work, naming the field.
"""
from __future__ import annotations

import math
import numbers
from functools import partial
from pathlib import Path
from typing import Optional

import jax.numpy as jnp
import ml_collections

from diffusion import gaussian, losses, reverse, samplers, schedules, timestep_sampling, training
from diffusion.cascade import augmentation
from diffusion.data import datasets
from diffusion.latent import networks
from diffusion.models.classifier import ImageClassifier
from diffusion.models.conditioning import ClassTokens
from diffusion.models.layers import ATTENTION_IMPLEMENTATIONS
from diffusion.models.mlp import MLPDenoiser
from diffusion.models.unet import NoisyClassifier, UNet
from diffusion.sddpm import process
from diffusion.sddpm.autoencoders import AUTOENCODERS, ConvAutoencoder
from diffusion.text import captions
from experiments import runs
from experiments.text import captioning, clip_runs
from experiments.unclip import stage_runs

UNET_FIELDS = ("base_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "dropout",
               "num_heads", "num_head_channels", "resblock_updown", "scale_shift_norm", "rescale_residual",
               "scale_skip", "efficient", "num_classes", "context_dim", "norm_groups", "remat",
               "attention_implementation")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CLIPS = ("none", "static", "dynamic")   # x̂_0 thresholding, one spelling in configs and flags (None in the library)
CONTEXT_ENCODERS = ("", "class_tokens") + captioning.ENCODERS  # τθ for the U-Net's cross-attention (diffusion.models.conditioning)


def _choice(field: str, value, allowed):
    if value not in allowed:
        raise ValueError(f"config field {field}={value!r} is not one of {sorted(map(str, allowed))}")


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# Config counts that must be integers >= 1, with what a smaller value would do where that is not obvious.
COUNT_FIELDS = {"train.batch_size": "", "train.num_steps": "", "train.log_every": "", "train.sample_every": "",
                "train.checkpoint_every": "", "sample.num": "", "parallel.fsdp": "",
                "optim.grad_accum_steps": " (1 applies every batch at once)",
                "train.keep_checkpoints": " (it keeps that many of the newest checkpoints; 0 would delete them all)"}


def check_flags_at_least(minimum: int, **flags):
    """Refuse command-line counts (``--num``, ``--batch``, …) below ``minimum``, naming the flag."""
    for name, value in flags.items():
        if not _is_integer(value) or value < minimum:
            raise ValueError(f"--{name}={value!r} must be an integer >= {minimum}")


def validate(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """Raise ValueError naming the first unknown name or impossible combination; a latent config is
    checked against ``autoencoder``, its first stage's config, when that is not trained yet (a
    study's plan), else against the run at ``data.autoencoder``."""
    d, m = c.diffusion, c.model
    _choice("diffusion.schedule", d.schedule, schedules.BETA_SCHEDULES)
    _choice("diffusion.prediction", d.prediction, gaussian.PREDICTIONS + (process.RESIDUAL,))
    _choice("diffusion.variance", d.variance, reverse.VARIANCES)
    _choice("diffusion.loss", d.loss, losses.LOSSES)
    _choice("diffusion.weighting", d.weighting, ("", "min_snr", "p2"))
    _choice("diffusion.timestep_sampler", d.timestep_sampler, timestep_sampling.SAMPLERS)
    _choice("diffusion.decoder", d.decoder, losses.DECODERS)
    _choice("model.kind", m.kind, ("unet", "mlp") + stage_runs.KINDS + tuple(AUTOENCODERS))
    _choice("model.context_encoder", m.context_encoder, CONTEXT_ENCODERS)
    _choice("data.crop", c.data.crop, ("",) + tuple(datasets.CROPS))
    _choice("model.attention_implementation", m.attention_implementation, ATTENTION_IMPLEMENTATIONS)
    _choice("train.compute_dtype", c.train.compute_dtype, DTYPES)
    _choice("sample.sampler", c.sample.sampler, samplers.SAMPLERS)
    _choice("sample.clip", c.sample.clip, CLIPS)
    _choice("sample.spacing", c.sample.spacing, ("",) + schedules.SPACING_NAMES)
    if c.sample.clip_max and (c.sample.clip_max < 1 or c.sample.clip != "dynamic"):
        raise ValueError(f"sample.clip_max={c.sample.clip_max!r} bounds the dynamic threshold s >= 1: it needs "
                         "sample.clip='dynamic' and a value >= 1 (0 leaves s unbounded)")
    _choice("optim.optimizer", c.optim.optimizer, ("adam", "adamw"))
    _choice("optim.decay", c.optim.decay, training.DECAYS)
    if c.optim.decay == "cooldown":
        training.check_cooldown(warmup_steps=c.optim.warmup_steps, total_steps=c.train.num_steps,
                                cooldown_steps=c.optim.cooldown_steps, prefix="config: optim.")
    elif c.optim.cooldown_steps:
        raise ValueError(f"config: optim.cooldown_steps={c.optim.cooldown_steps} is read only with optim.decay="
                         f"'cooldown' (it is {c.optim.decay!r}): set optim.decay=cooldown, or optim.cooldown_steps=0")
    _choice("classifier.kind", c.classifier.kind, ("cnn", "noisy"))
    losses.check_loss_variance(d.loss, d.variance, field_prefix="diffusion.")
    process.check_prediction(d.loss, d.prediction, loss_field="diffusion.loss",
                           prediction_field="config field diffusion.prediction")
    if d.loss == process.LOSS and d.weighting:
        raise ValueError(f"config: diffusion.weighting={d.weighting!r} reweights L_simple's MSE; diffusion.loss='sddpm' "
                         "is −log q_r with no such weight: set diffusion.weighting=''")
    if d.zero_terminal_snr and d.prediction == "eps":
        raise ValueError("config: diffusion.zero_terminal_snr makes the last step pure noise, where ε-prediction "
                         "cannot recover x_0; set diffusion.prediction='v' (Lin et al. 2024) or 'x0'")
    if d.timestep_sampler == "importance" and d.loss == "simple":
        raise ValueError("config: diffusion.timestep_sampler='importance' samples L_VLB; use diffusion.loss 'vlb' or 'hybrid'")
    if d.num_steps < 1:
        raise ValueError(f"config field diffusion.num_steps={d.num_steps} must be >= 1")
    if c.data.workers < 0 or c.data.read_threads < 1:
        raise ValueError(f"config: data.workers={c.data.workers} (grain worker processes) must be >= 0 and "
                         f"data.read_threads={c.data.read_threads} >= 1")
    if c.data.class_dropout > 0 and m.num_classes == 0:
        raise ValueError("config: data.class_dropout > 0 needs a class-conditional model (model.num_classes > 0)")
    if m.num_classes > c.data.num_classes:
        raise ValueError(f"config: model.num_classes={m.num_classes} exceeds data.num_classes={c.data.num_classes}")
    if m.context_encoder == "class_tokens" and not (m.num_classes > 0 and m.context_dim > 0
                                                    and _is_integer(m.context_tokens) and m.context_tokens >= 1):
        raise ValueError(f"config: model.context_encoder={m.context_encoder!r} turns each label into model.context_tokens "
                         "tokens of model.context_dim channels: it needs model.num_classes > 0, model.context_dim > 0 "
                         "and model.context_tokens >= 1")
    if m.context_dim > 0 and not m.context_encoder and m.kind != stage_runs.DECODER:
        raise ValueError(f"config: model.context_dim={m.context_dim} adds cross-attention to a context that no domain "
                         "encoder makes: set model.context_encoder='class_tokens', 'text' or 'clip_text' (or "
                         "model.context_dim=0)")
    check_text(c)
    if m.kind in stage_runs.KINDS:
        stage_runs.check(c)
    is_toy = c.data.source.startswith("toy:")
    if is_toy != (m.kind == "mlp"):
        raise ValueError(f"config: model.kind={m.kind!r} does not fit data.source={c.data.source!r} "
                         "(2-D toy data take the 'mlp', images the 'unet' or an autoencoder)")
    if is_toy and d.decoder != "gaussian":
        raise ValueError("config: toy data are continuous; set diffusion.decoder='gaussian'")
    if c.data.random_flip and (is_toy or m.kind == stage_runs.PRIOR):   # the pipeline flips [H, W, C] records
        what = "2-D points" if is_toy else "CLIP image embeddings (an unCLIP prior)"
        raise ValueError(f"config: data.random_flip mirrors images left–right, but this run trains on {what}: "
                         "set data.random_flip=False")
    for field, why in COUNT_FIELDS.items():
        section, name = field.split(".")
        if not _is_integer(c[section][name]) or c[section][name] < 1:
            raise ValueError(f"config field {field}={c[section][name]!r} must be an integer >= 1{why}")
    if not _is_integer(c.train.keep_period) or c.train.keep_period < 0:
        raise ValueError(f"config field train.keep_period={c.train.keep_period!r} must be an integer >= 0 "
                         "(0: no milestones; n: checkpoints at multiples of n are never deleted)")
    if not _is_integer(c.train.eval_every) or c.train.eval_every < 0:
        raise ValueError(f"config field train.eval_every={c.train.eval_every!r} must be an integer >= 0 "
                         "(0: no held-out evaluation during training)")
    if not (math.isfinite(c.optim.lr) and c.optim.lr > 0):
        raise ValueError(f"config field optim.lr={c.optim.lr!r} must be a finite number > 0")
    samplers.check_steps(c.sample.sampler, c.sample.steps, d.num_steps, what="config field sample.steps")
    check_sampler_reads_model(c, c.sample.sampler, c.sample.steps, d.num_steps, what="config field sample.")
    if c.data.autoencoder:
        check_latent(c, autoencoder)
    check_clip(c, c.sample.clip, "config field sample.clip")
    check_super_resolution(c)
    if not is_toy:   # the U-Net and the convolutional autoencoder check that the image size fits their levels
        make_model(c, load_frozen=False, autoencoder=autoencoder)


def check_latent(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """Refuse a latent-diffusion config (``data.autoencoder``) that cannot run: no autoencoder run
    there (unless its config is given as ``autoencoder``, to be trained), one trained on other
    images, latents the U-Net cannot halve at each level, attention at a side no level has,
    settings for pixels (the discretised decoder, image flips)."""
    where = c.data.autoencoder
    if autoencoder is None and not (Path(where) / "config.json").exists():
        raise ValueError(f"config field data.autoencoder={where!r} is not an autoencoder run (no {Path(where) / 'config.json'}): "
                         f"train one first with python -m experiments.train_autoencoder --config "
                         f"configs/latent/autoencoder_kl_f4.py --workdir {where}")
    a = autoencoder if autoencoder is not None else runs.load_config(where)
    if (a.data.image_size, a.data.channels) != (c.data.image_size, c.data.channels):
        raise ValueError(f"config: the autoencoder in {where} encodes {a.data.image_size}×{a.data.image_size}×"
                         f"{a.data.channels} images, not data.image_size={c.data.image_size} × data.channels="
                         f"{c.data.channels}: use its data settings")
    if c.model.kind != "unet":
        raise ValueError(f"config: latent diffusion (data.autoencoder) runs the U-Net on z; model.kind={c.model.kind!r} "
                         "is for pixels: set model.kind='unet'")
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
    if c.diffusion.decoder != "gaussian":
        raise ValueError(f"config: diffusion.decoder={c.diffusion.decoder!r} reads 8-bit pixels; latents are "
                         "continuous: set diffusion.decoder='gaussian'")
    if c.data.random_flip:
        raise ValueError("config: data.random_flip flips images, but a latent run trains on latents encoded once "
                         "at its start: set data.random_flip=False")


def check_super_resolution(c: ml_collections.ConfigDict):
    """Refuse a cascade stage that cannot run: augmentation settings without a super-resolution stage
    (``data.low_resolution``), a low resolution that does not divide the image size, latents or a
    non-U-Net, levels s outside [0, T), an empty σ range or an even blur kernel."""
    a, low, size, T = c.cascade, c.data.low_resolution, c.data.image_size, c.diffusion.num_steps
    _choice("cascade.augmentation", a.augmentation, augmentation.AUGMENTATIONS)
    if not low:
        if a.augmentation != "none" or a.truncated:
            raise ValueError(f"config: cascade.augmentation={a.augmentation!r} / cascade.truncated augment a super-resolution "
                             "stage's low-resolution input: set data.low_resolution (e.g. 14), or leave them at 'none' / False")
        return
    if not _is_integer(low) or not 1 <= low < size or size % low:
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
        if not _is_integer(a.blur_kernel) or a.blur_kernel < 1 or a.blur_kernel % 2 == 0:
            raise ValueError(f"config field cascade.blur_kernel={a.blur_kernel!r} must be an odd integer >= 1 (CDM: 3)")
        if not 0 < a.blur_fraction <= 1:
            raise ValueError(f"config field cascade.blur_fraction={a.blur_fraction!r} is the share of training examples "
                             "blurred: a number in (0, 1] (CDM: 0.5)")


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
    """``training.train_step``'s ``condition`` for a super-resolution stage (``cascade.training_condition``
    with the config's augmentation) or an unCLIP decoder (``unclip.make_condition``: each image's CLIP
    embedding), None for any other run."""
    if c.model.kind == stage_runs.DECODER:
        return stage_runs.make_condition(c)
    if not c.data.low_resolution:
        return None
    a = c.cascade
    return partial(augmentation.training_condition, low=c.data.low_resolution, augmentation=a.augmentation,
                   schedule=schedule, level_range=tuple(a.aug_level_range), sigma_range=tuple(a.blur_sigma_range),
                   kernel_size=a.blur_kernel, blur_fraction=a.blur_fraction)


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
    if m.kind == stage_runs.PRIOR:
        return stage_runs.make_prior(c, out, load_frozen)
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
        return AUTOENCODERS[m.kind](image_shape=shape, **kw)
    if m.context_encoder == "class_tokens":   # the labels reach the U-Net through τθ, not a class embedding
        tau = ClassTokens(num_classes=m.num_classes, num_tokens=m.context_tokens, dim=m.context_dim)
        return UNet(out_channels=out, context_encoder=tau, **dict(_unet_fields(c, shape), num_classes=0))
    if captioning.is_conditioned(c):
        return UNet(out_channels=out, context_encoder=captioning.make_encoder(c, load_frozen), **_unet_fields(c, shape))
    return UNet(out_channels=out, **_unet_fields(c, shape))


def check_text(c: ml_collections.ConfigDict):
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
        if not (_is_integer(m.text_layers) and m.text_layers >= 1 and _is_integer(m.text_heads) and m.text_heads >= 1
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


def _unet_fields(c: ml_collections.ConfigDict, shape: tuple) -> dict:
    """The U-Net's constructor arguments for ``c``'s model on x_0 of ``shape`` (``data_shape``)."""
    fields = {k: c.model[k] for k in UNET_FIELDS}
    fields["channel_mult"] = tuple(fields["channel_mult"])
    fields["attention_resolutions"] = tuple(fields["attention_resolutions"])
    if not isinstance(fields["num_res_blocks"], int):
        fields["num_res_blocks"] = tuple(fields["num_res_blocks"])
    vector_tokens = c.unclip.embedding_tokens if c.model.kind == stage_runs.DECODER else 0
    return dict(fields, image_size=shape[0], dtype=DTYPES[c.train.compute_dtype], vector_tokens=vector_tokens)


def make_classifier(c: ml_collections.ConfigDict):
    """The feature classifier (``classifier.kind='cnn'``) or ADM's noisy classifier ('noisy'), whose
    encoder is the U-Net described by the ``model`` section."""
    if c.classifier.kind == "cnn":
        return ImageClassifier(num_classes=c.data.num_classes, features=c.classifier.features,
                               dropout=c.classifier.dropout)
    return NoisyClassifier(num_labels=c.data.num_classes, **dict(_unet_fields(c, data_shape(c)), num_classes=0))


def data_shape(c: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None) -> tuple:
    """The shape of one x_0 the model diffuses: a 2-D point, an unCLIP prior's CLIP image embedding,
    an image, or the latent z = ℰ(x) of the autoencoder ``data.autoencoder`` names (latent
    diffusion, Rombach et al. 2022), whose config is ``autoencoder`` when given (a study's plan,
    before it is trained)."""
    if c.model.kind == "mlp":
        return (2,)
    if c.model.kind == stage_runs.PRIOR:   # a CLIP image embedding (unCLIP §2.2)
        return (stage_runs.embed_dim(c),)
    if c.data.autoencoder:
        return latent_shape(autoencoder if autoencoder is not None else runs.load_config(c.data.autoencoder))
    return (c.data.image_size, c.data.image_size, c.data.channels)


def latent_shape(c: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(h, w, c) of the latents z = ℰ(x) of the autoencoder ``c`` describes: ((image_size + 2·pad)/f,
    …, first_stage.latent_channels)."""
    f = c.first_stage
    return networks.latent_shape(c.data.image_size, f.pad, f.factor, f.latent_channels)


def conditioning(c: ml_collections.ConfigDict, condition) -> Optional[dict]:
    """The network's conditioning arguments for ``condition`` (``condition_of``: class labels int[B],
    or captions as token ids int[B, L]): ``{"tokens": …}`` for a text-conditioned model,
    ``{"labels": …}`` for a class-conditional one, None for an unconditional one."""
    if captioning.is_conditioned(c):
        return {"tokens": condition}
    return {"labels": condition} if c.model.num_classes else None


def condition_of(c: ml_collections.ConfigDict, split: datasets.Split):
    """Each example's condition as ``conditioning`` takes it: its caption's token ids [N, L] for a
    text-conditioned run, else its label [N]."""
    return split.tokens if captioning.is_conditioned(c) else split.labels


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
    """The denoiser's initial parameters, from one example of the data's shape."""
    example = (captioning.tokenizer_of(config).encode([""]) if captioning.is_conditioned(config)   # the null caption
               else jnp.zeros((1,), jnp.int32))
    cond = conditioning(config, example) or {}
    if config.data.low_resolution:   # the U-Net's conv_in and s-embedding are shaped by these inputs at init
        low = jnp.zeros((1, config.data.low_resolution, config.data.low_resolution, config.data.channels))
        cond.update(augmentation.conditioning(low, config.data.image_size,
                                         0 if config.cascade.augmentation == "gaussian" else None))
    if config.model.kind == stage_runs.DECODER:   # the projections of the image embedding are shaped by it
        cond["cond_vector"] = jnp.zeros((1, stage_runs.embed_dim(config)))
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
    if config.data.captions:
        splits = tuple(captioning.captioned(config, split) for split in splits)
    return splits


def streams_training_records(config) -> bool:
    """Whether a run only streams its training records, so that they can be read lazily: a TFDS
    source whose split is not transformed whole first, as latents encoded once (``data.autoencoder``),
    captions measured on every image (``data.captions``) or an unCLIP prior's CLIP embeddings are."""
    return (config.data.source.startswith("tfds:") and not config.data.autoencoder and not config.data.captions
            and config.model.kind != stage_runs.PRIOR)


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
    """What a run's training grids are drawn for: the classes in turn; for a text-conditioned run the
    class prompts in turn ("the digit 7"), as token ids [n, L]."""
    if captioning.is_conditioned(c):
        prompts = captions.class_prompts(c.data.captions)
        return jnp.asarray(captioning.tokenizer_of(c).encode([prompts[k % len(prompts)] for k in range(n)]))
    return jnp.arange(n, dtype=jnp.int32) % max(c.model.num_classes, 1)
