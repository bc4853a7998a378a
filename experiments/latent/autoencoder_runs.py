"""From a config's ``first_stage`` and ``first_stage_train`` sections to the latent-diffusion
autoencoder, its discriminator, loss settings, optimizer and state; a trained one loaded back
(``load_autoencoder``: ``encode``/``decode`` with EMA weights), and the scaled latent space a
diffusion run with ``data.autoencoder`` lives in (``latent_space``, ``decoded``), its training split
encoded once (``latent_training_data``).

Bad settings fail here before any work, naming the field.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import parallel
from diffusion.data import datasets
from diffusion.latent import autoencoder_losses, autoencoder_step, networks, patch_gan
from experiments import build, runs
from experiments.latent import hooks

KINDS = ("kl", "vq")
CODEBOOK_UPDATES = ("loss", "ema")


def _integer_at_least(field: str, value, minimum: int, why: str = ""):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"config field {field}={value!r} must be an integer >= {minimum}{why}")


def _number_in(field: str, value, low: float, high: float, what: str):
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and low <= value <= high):
        raise ValueError(f"config field {field}={value!r} must be {what}")


def validate(c: ml_collections.ConfigDict):
    """Raise ValueError naming the first impossible ``first_stage`` / ``first_stage_train`` setting:
    an unknown kind, a factor f that is not 1, 2, 4 or 8 or does not divide the (padded) image size,
    a VQ codebook of fewer than 2 codes, a negative weight, … (the rest of the config is checked by
    ``build.validate``)."""
    f, t = c.first_stage, c.first_stage_train
    if c.optim.grad_accum_steps != 1:
        raise ValueError(f"config field optim.grad_accum_steps={c.optim.grad_accum_steps!r}: the autoencoder's "
                         "step applies every batch at once; set 1 (or lower train.batch_size)")
    if c.data.source.startswith("toy:"):
        raise ValueError(f"config: data.source={c.data.source!r} is 2-D toy data; an autoencoder needs images")
    for field, value, allowed in (("first_stage.kind", f.kind, KINDS),
                                  ("first_stage.codebook_update", f.codebook_update, CODEBOOK_UPDATES),
                                  ("first_stage_train.reconstruction", t.reconstruction,
                                   autoencoder_losses.RECONSTRUCTIONS)):
        if value not in allowed:
            raise ValueError(f"config field {field}={value!r} is not one of {list(allowed)}")
    _integer_at_least("first_stage.pad", f.pad, 0)
    networks.check_factor(c.data.image_size, f.pad, f.factor, tuple(f.channel_mult))
    for field in ("base_channels", "num_res_blocks", "latent_channels", "norm_groups"):
        _integer_at_least(f"first_stage.{field}", f[field], 1)
    for mult in f.channel_mult:
        if (f.base_channels * mult) % f.norm_groups:
            raise ValueError(f"config: {f.base_channels * mult} channels (first_stage.base_channels × "
                             f"channel_mult) are not divisible into first_stage.norm_groups={f.norm_groups} groups")
    if f.kind == "vq":
        _integer_at_least("first_stage.codebook_size", f.codebook_size, 2,
                          " (a VQ codebook of one code carries no information)")
    _number_in("first_stage_train.kl_weight", t.kl_weight, 0, math.inf, "a finite number >= 0 (LDM uses 1e-6)")
    _number_in("first_stage_train.codebook_weight", t.codebook_weight, 0, math.inf, "a finite number >= 0")
    _number_in("first_stage_train.commitment", t.commitment, 0, math.inf, "a finite number >= 0 (β; 0.25 in VQ-VAE)")
    _number_in("first_stage_train.restart_below", t.restart_below, 0, math.inf, "a finite number >= 0 (0: no restarts)")
    if not (0 < t.codebook_decay < 1):
        raise ValueError(f"config field first_stage_train.codebook_decay={t.codebook_decay!r} must lie in (0, 1)")
    if f.discriminator:
        _number_in("first_stage_train.disc_weight", t.disc_weight, 1e-30, math.inf,
                   "a finite number > 0 with first_stage.discriminator (LDM uses 0.5)")
        _integer_at_least("first_stage_train.disc_start", t.disc_start, 0)
        _integer_at_least("first_stage.disc_layers", f.disc_layers, 1)
        _integer_at_least("first_stage.disc_channels", f.disc_channels, 1)
        if f.disc_channels % f.norm_groups:
            raise ValueError(f"config: first_stage.disc_channels={f.disc_channels} is not divisible into "
                             f"first_stage.norm_groups={f.norm_groups} groups")
    _integer_at_least("first_stage_train.eval_examples", t.eval_examples, 2, " (a covariance for the rFID)")
    _integer_at_least("first_stage_train.grid_images", t.grid_images, 1)


def make_autoencoder(c: ml_collections.ConfigDict):
    f = c.first_stage
    kw = dict(channels=c.data.channels, latent_channels=f.latent_channels, base_channels=f.base_channels,
              channel_mult=tuple(f.channel_mult), num_res_blocks=f.num_res_blocks, mid_attention=f.mid_attention,
              norm_groups=f.norm_groups, pad=f.pad)
    if f.kind == "kl":
        return networks.AutoencoderKL(**kw)
    return networks.AutoencoderVQ(codebook_size=f.codebook_size, ema=f.codebook_update == "ema", **kw)


def make_discriminator(c: ml_collections.ConfigDict) -> Optional[patch_gan.PatchDiscriminator]:
    f = c.first_stage
    if not f.discriminator:
        return None
    return patch_gan.PatchDiscriminator(channels=f.disc_channels, layers=f.disc_layers, norm_groups=f.norm_groups)


def loss_settings(c: ml_collections.ConfigDict) -> autoencoder_losses.FirstStageLoss:
    f, t = c.first_stage, c.first_stage_train
    return autoencoder_losses.FirstStageLoss(
        kind=f.kind, reconstruction=t.reconstruction, kl_weight=t.kl_weight, codebook_weight=t.codebook_weight,
        commitment=t.commitment, ema_codebook=f.kind == "vq" and f.codebook_update == "ema",
        restart_below=t.restart_below if f.codebook_update == "ema" else 0.0,
        disc_weight=t.disc_weight if f.discriminator else 0.0, disc_start=t.disc_start)


def make_optimizer(c: ml_collections.ConfigDict):
    """The ``optim`` settings, one optimizer for the autoencoder and one for the discriminator (if any)."""
    parts = {"autoencoder": build.make_optimizer(c)}
    if c.first_stage.discriminator:
        parts["discriminator"] = build.make_optimizer(c)
    return autoencoder_step.part_optimizer(parts)


def init_variables(c: ml_collections.ConfigDict, key) -> tuple[dict, dict]:
    """(params, model_state): ``{"autoencoder": …[, "discriminator": …]}`` and the autoencoder's other
    collections (the EMA codebook), from one example of the data's shape."""
    k_ae, k_disc = jax.random.split(key)
    x = jnp.zeros((1,) + build.data_shape(c))
    variables = dict(make_autoencoder(c).init(k_ae, x))
    params = {"autoencoder": variables.pop("params")}
    disc = make_discriminator(c)
    if disc is not None:
        params["discriminator"] = disc.init(k_disc, x)["params"]
    return params, variables


def init_state(c: ml_collections.ConfigDict, key, tx) -> autoencoder_step.AutoencoderState:
    params, model_state = init_variables(c, key)
    return autoencoder_step.create_state(key, params, model_state, tx)


@dataclass
class Autoencoder:
    """A trained first stage: its config, module and EMA variables (``{"params": …}`` plus the EMA
    codebook). ``encode(x [B, H, W, C] in [−1, 1], key=None) -> z [B, h, w, c]`` (the KL model's mean,
    or a sample given a key; the VQ model's pre-quantisation z_e, as LDM diffuses), and
    ``decode(z) -> x̃ [B, H, W, C]`` (the VQ model quantises first); both jit-able."""
    config: ml_collections.ConfigDict
    model: Any
    variables: dict
    step: int

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return hooks.latent_shape(self.config)

    def encode(self, x, key=None):
        return self.model.apply(self.variables, x, key, method="encode")

    def decode(self, z):
        return self.model.apply(self.variables, z, method="decode")


def load_autoencoder(workdir, step: Optional[int] = None) -> Autoencoder:
    """The EMA autoencoder of ``workdir``'s latest (or ``step``'s) checkpoint, written by
    ``experiments.train_autoencoder``; only its EMA weights and codebook are read."""
    config = runs.load_config(workdir)
    validate(config)
    model = make_autoencoder(config)
    abstract = jax.eval_shape(lambda k: init_variables(config, k), jax.random.key(0))
    template = {"ema_params": {"autoencoder": runs.replicated_like(abstract[0]["autoencoder"])},
                "model_state": runs.replicated_like(abstract[1])}
    state, meta = runs.restore_partial(workdir, template, config, step, "train_autoencoder")
    variables = {"params": state["ema_params"]["autoencoder"], **state["model_state"]}
    return Autoencoder(config, model, variables, int(meta["data_position"]))


@dataclass
class LatentSpace:
    """What a latent-diffusion run diffuses: z = s·ℰ(x), with LDM's scale factor s = 1/std(ℰ(x)) of
    the training latents (``first_stage.scale_factor``, stored in the run's ``data.latent_scale``),
    so z has unit variance; ``decode(z) = 𝒟(z / s)``. Both jit-able; the frozen EMA weights are
    constants of whatever program calls them."""
    autoencoder: Autoencoder
    scale: float

    def encode(self, x):
        return self.scale * self.autoencoder.encode(x)

    def decode(self, z):
        return self.autoencoder.decode(z / self.scale)


def latent_space(config: ml_collections.ConfigDict) -> Optional[LatentSpace]:
    """A trained diffusion run's latent space: None for pixel diffusion, else the EMA autoencoder
    of ``data.autoencoder`` with the scale the run measured and stored (never measured again)."""
    if not config.data.autoencoder:
        return None
    if not config.data.latent_scale > 0:
        raise ValueError(f"config field data.latent_scale={config.data.latent_scale!r}: a latent run stores the scale "
                         "it measured at its start in its config.json; train it with experiments.train first")
    return LatentSpace(load_autoencoder(config.data.autoencoder), float(config.data.latent_scale))


def decoded(space: Optional[LatentSpace], x):
    """Samples x [..., h, w, c] as images: x itself for pixel diffusion (``space`` None), 𝒟(x / s)
    [..., H, W, C] for a latent run, over any leading axes (a trajectory's frames)."""
    if space is None:
        return x
    images = space.decode(x.reshape((-1,) + x.shape[-3:]))
    return images.reshape(x.shape[:-3] + images.shape[1:])


def run_latent_scale(data, stored) -> float:
    """A latent run's scale s from its ``data`` config section: its own ``latent_scale`` when > 0,
    else the one the run ``stored`` (its saved data section, or None) measured for the same
    autoencoder, else 0 (not measured yet)."""
    if data["latent_scale"] > 0:
        return data["latent_scale"]
    if stored is not None and stored["autoencoder"] == data["autoencoder"] and stored["latent_scale"] > 0:
        return stored["latent_scale"]
    return 0.0


def latent_training_data(config, workdir: Path, train_split: datasets.Split, mesh
                         ) -> tuple[ml_collections.ConfigDict, LatentSpace, datasets.Split]:
    """(config with its ``data.latent_scale``, the latent space, the training split as latents
    z = s·ℰ(x)) of a latent-diffusion run (Rombach et al. 2022).

    The frozen EMA encoder encodes the whole split once, here, and training reads the cached
    latents (the KL model's mean, as ``Autoencoder.encode``): encoding each batch inside the jitted
    step would repeat the encoder's forward pass at full resolution every step (the README's
    latent-diffusion section has the measured cost of each). The scale s is the config's own when
    > 0 (a checkpoint made with another is refused, as data.latent_scale is a compatibility field),
    else the one the run stored in its ``config.json`` (a resume: never measured again), else LDM's
    1/std of these latents, measured once here; ``loop.restore_or_init`` then writes it with the
    config, where sampling and evaluation read it.
    """
    autoencoder = load_autoencoder(config.data.autoencoder)
    latents = parallel.encode_split(autoencoder.encode, train_split, mesh)
    stored = runs.load_config(workdir).data if (workdir / "config.json").exists() else None
    scale = run_latent_scale(config.data, stored) or networks.scale_factor(latents.images)
    config = config.copy_and_resolve_references()
    config.data.latent_scale = float(scale)
    space = LatentSpace(autoencoder, float(scale))
    return config, space, replace(latents, images=(latents.images * scale).astype(np.float32))
