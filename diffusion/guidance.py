"""Guidance: functions that wrap one model function into another.

A model function is ``model_fn(x_t, timesteps, **cond) -> output`` with ``timesteps`` the
network's own steps; the guided function has the same form, its scale passed in ``cond``
so that a compiled sampler does not recompile when the scale changes.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion import gaussian, reverse
from diffusion.schedules import Schedule


def classifier_free(model_fn: Callable, null_label: int, variance: str = "fixed_small") -> Callable:
    """ε̃ = (1 + w)·ε(x, c) − w·ε(x, ∅)  (Ho & Salimans 2021, eq. 6).

    Both passes run as one network call on a doubled batch. The combination is applied to the
    prediction channels (valid for ε, x_0 and v alike, which are affine in one another at fixed
    x_t); a learned variance is taken from the conditional pass. The returned function takes
    ``labels`` int[B] and ``guidance_scale`` (w, scalar or [B]); the null label is the null context
    of a U-Net whose cross-attention reads class tokens τθ(y). Any other conditioning [B, ...] (an
    image concatenated to x_t) is given to both passes.
    """
    def guided(x_t, timesteps, *, labels, guidance_scale, **cond):
        batch = x_t.shape[0]
        both = {k: jnp.concatenate([v, v]) for k, v in cond.items()}
        out = model_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([timesteps, timesteps]),
                       labels=jnp.concatenate([labels, jnp.full_like(labels, null_label)]), **both)
        pred, var = reverse.split_output(out, variance)
        w = jnp.reshape(guidance_scale, (-1,) + (1,) * (x_t.ndim - 1)).astype(pred.dtype)
        guided_pred = (1 + w) * pred[:batch] - w * pred[batch:]
        return guided_pred if var is None else jnp.concatenate([guided_pred, var[:batch]], axis=-1)
    return guided


def classifier(model_fn: Callable, log_prob_fn: Callable, schedule: Schedule, *,
               prediction: str = "eps", variance: str = "fixed_small", conditional: bool = False) -> Callable:
    """ε̃ = ε − √(1−ᾱ_t)·w·∇_x log p_φ(y | x_t, t)  (Dhariwal & Nichol 2021, Algorithm 2).

    ``log_prob_fn(x_t, timesteps, labels) -> [B]`` is the noisy classifier's log p(y | x_t);
    ``schedule`` is the one the network was trained with (indexed by network timesteps).
    The returned function takes ``labels`` and ``guidance_scale`` as well as the model's ``cond``;
    a ``conditional`` model is given the labels too (ADM guides its conditional models as well).
    """
    def guided(x_t, timesteps, *, labels, guidance_scale, **cond):
        out = model_fn(x_t, timesteps, **(dict(cond, labels=labels) if conditional else cond))
        pred, var = reverse.split_output(out, variance)
        grad = jax.grad(lambda x: jnp.sum(log_prob_fn(x, timesteps, labels)))(x_t)
        w = jnp.reshape(guidance_scale, (-1,) + (1,) * (x_t.ndim - 1)).astype(pred.dtype)
        _, eps = gaussian.to_x0_eps(schedule, x_t, timesteps, pred, prediction)
        eps = eps - gaussian.extract(schedule.sqrt_one_minus_alphas_cumprod, timesteps, x_t) * w * grad
        guided_pred = gaussian.from_eps(schedule, x_t, timesteps, eps, prediction)
        return guided_pred if var is None else jnp.concatenate([guided_pred, var], axis=-1)
    return guided
