"""One pure training step of a first-stage autoencoder (and its optional PatchGAN), on the library's
``TrainState``, ``apply_gradients`` (the finiteness guard) and EMA.

The state's ``params`` are ``{"autoencoder": …}`` plus ``"discriminator"`` when there is one; the two
are updated together by one optimizer over both (``optax.multi_transform``, one per part), the
discriminator's gradient being that of its own hinge loss only. Nothing here reads a config.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from diffusion import training
from diffusion.latent import autoencoder_losses


@flax.struct.dataclass
class AutoencoderState(training.TrainState):
    """``TrainState`` plus ``model_state``: the autoencoder's non-parameter variables (the EMA
    codebook's ``vq_ema`` collection), ``{}`` when it has none."""
    model_state: Any


def create_state(key, params: dict, model_state: dict, tx: optax.GradientTransformation) -> AutoencoderState:
    """A fresh state around ``params`` ({"autoencoder": …[, "discriminator": …]}); the EMA starts equal to them."""
    base = training.create_train_state(key, params, tx, 1)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return AutoencoderState(**fields, model_state=jax.tree.map(jnp.copy, model_state))


def part_optimizer(parts: dict) -> optax.GradientTransformation:
    """One optimizer per top-level part of the parameters, e.g. {"autoencoder": adam, "discriminator": adam}
    (each with its own gradient clipping)."""
    return optax.multi_transform(parts, lambda p: {k: jax.tree.map(lambda _: k, v) for k, v in p.items()})


def _with_last_kernel(params: dict, kernel) -> dict:
    """``params`` with the decoder's last layer (``decoder/conv_out/kernel``) replaced by ``kernel``."""
    decoder = dict(params["decoder"])
    decoder["conv_out"] = dict(decoder["conv_out"], kernel=kernel)
    return dict(params, decoder=decoder)


def autoencoder_step(state: AutoencoderState, batch: dict, *, model, tx: optax.GradientTransformation,
                     settings: autoencoder_losses.FirstStageLoss, discriminator=None, ema_decay: float = 0.999,
                     ema_warmup: bool = True, codebook_decay: float = 0.99,
                     perceptual_fn: Optional[autoencoder_losses.PerceptualFn] = None):
    """One step on ``batch`` ({'image' [B, H, W, C] in [−1, 1]}): the autoencoder's loss
    (``first_stage_losses``) and, with a ``discriminator``, the adversarial terms from step
    ``settings.disc_start``; the EMA codebook update (and dead-code restarts) when
    ``settings.ema_codebook``. z's noise and the restarts' draws come from ``fold_in(rng, step)``.
    Metrics' ``update_finite`` is False when the step was not applied."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    sample_key = key if settings.kind == "kl" else None
    x = batch["image"]
    ae_params = state.params["autoencoder"]
    disc_params = state.params.get("discriminator")
    factor = autoencoder_losses.adversarial_factor(state.step, settings.disc_start)
    forward = lambda p: model.apply({"params": p, **state.model_state}, x, sample_key)
    gan = (lambda x_rec: autoencoder_losses.hinge_g_loss(discriminator.apply({"params": disc_params}, x_rec))) \
        if discriminator is not None else None
    weight = 0.0 if gan is None else _adaptive_gan_weight(forward, ae_params, x, gan, settings, perceptual_fn)

    def ae_loss(p):
        x_rec, aux = forward(p)
        loss, terms = autoencoder_losses.autoencoder_loss(x, x_rec, aux, settings, perceptual_fn)
        if gan is not None:
            terms["g_loss"] = gan(x_rec)
            loss = loss + settings.disc_weight * factor * weight * terms["g_loss"]
        return loss, (terms, x_rec, aux)

    (loss, (terms, x_rec, aux)), ae_grads = jax.value_and_grad(ae_loss, has_aux=True)(ae_params)
    grads, guard = {"autoencoder": ae_grads}, loss
    metrics = {"loss": loss, **terms}
    if discriminator is not None:
        disc_loss, grads["discriminator"], logits = _discriminator_loss_and_grads(discriminator, disc_params, x,
                                                                                   x_rec, factor)
        guard = guard + disc_loss
        metrics.update(disc_loss=disc_loss, **logits, disc_adaptive_weight=weight, disc_factor=factor)
    model_state = state.model_state
    if settings.kind == "vq":
        model_state, guard, usage = _codebook_step(state.model_state, aux, key, guard, model=model,
                                                   settings=settings, codebook_decay=codebook_decay)
        metrics.update(usage)
    new_state, grad_norm, finite = training.apply_gradients(state, guard, grads, tx=tx, ema_decay=ema_decay,
                                                            ema_warmup=ema_warmup)
    new_state = new_state.replace(model_state=jax.tree.map(lambda a, b: jnp.where(finite, a, b),
                                                           model_state, state.model_state))
    return new_state, dict(metrics, grad_norm=grad_norm, update_finite=finite)


def _adaptive_gan_weight(forward, ae_params: dict, x, gan, settings: autoencoder_losses.FirstStageLoss,
                         perceptual_fn: Optional[autoencoder_losses.PerceptualFn]):
    """The adversarial term's adaptive weight (Esser et al. 2021, eq. 7), from the gradients of the
    reconstruction and GAN losses at the decoder's last layer (``autoencoder_losses.adaptive_weight``)."""
    kernel = ae_params["decoder"]["conv_out"]["kernel"]
    at_last = lambda loss_of: jax.grad(lambda k: loss_of(forward(_with_last_kernel(ae_params, k))[0]))(kernel)
    return autoencoder_losses.adaptive_weight(
        at_last(lambda r: autoencoder_losses.reconstruction_term(x, r, settings, perceptual_fn)), at_last(gan))


def _discriminator_loss_and_grads(discriminator, disc_params, x, x_rec, factor):
    """(the discriminator's hinge loss on real x and the reconstructions x_rec [B, H, W, C], scaled by
    ``factor``; its gradient; the mean real and fake logits), no gradient reaching the autoencoder."""
    fake = jax.lax.stop_gradient(x_rec)

    def d_loss(d):
        real_logits, fake_logits = discriminator.apply({"params": d}, x), discriminator.apply({"params": d}, fake)
        return factor * autoencoder_losses.hinge_d_loss(real_logits, fake_logits), (real_logits.mean(), fake_logits.mean())

    (disc_loss, (real, fake_mean)), grads = jax.value_and_grad(d_loss, has_aux=True)(disc_params)
    return disc_loss, grads, {"logits_real": real, "logits_fake": fake_mean}


def _codebook_step(model_state: dict, aux: dict, key, guard, *, model, settings: autoencoder_losses.FirstStageLoss,
                   codebook_decay: float):
    """(the model state after a VQ step, the finiteness guard, the codebook's usage metrics): with
    ``settings.ema_codebook`` the codebook's EMA update (dead-code restarts drawn from
    ``fold_in(key, 1)``), a non-finite codebook making the guard NaN."""
    usage = dict(zip(("perplexity", "dead_codes"),
                     autoencoder_losses.codebook_usage(aux["indices"], model.codebook_size)))
    if settings.ema_codebook:
        stats = autoencoder_losses.ema_codebook_update(model_state["vq_ema"]["quantize"], aux["z_e"], aux["indices"],
                                                       codebook_decay, restart_below=settings.restart_below,
                                                       key=jax.random.fold_in(key, 1))
        model_state = {"vq_ema": {"quantize": stats}}
        # a non-finite codebook must stop the step like a non-finite parameter does
        guard = jnp.where(training.all_finite(stats), guard, jnp.nan)
    return model_state, guard, usage
