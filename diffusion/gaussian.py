"""The Gaussian forward process, its posterior, and conversions between x_0, ε, v and the score.

All functions take an integer index ``t`` of shape [B] into ``schedule`` and
arrays of shape [B, ...]; coefficients broadcast over the trailing axes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion.schedules import Schedule


def extract(coef: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """coef[t] reshaped to [B, 1, ..., 1] so it broadcasts against x [B, ...]."""
    out = jnp.take(coef, t, axis=0).astype(x.dtype)
    return out.reshape(out.shape + (1,) * (x.ndim - out.ndim))


def q_sample(schedule: Schedule, x0, t, noise):
    """x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε  (Ho et al. 2020, eq. 4)."""
    return (extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise)


def q_mean_variance(schedule: Schedule, x0, t):
    """Mean, variance and log-variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I)."""
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
    var = extract(1.0 - schedule.alphas_cumprod, t, x0)
    return mean, var, jnp.log(var)


def q_posterior(schedule: Schedule, x0, x_t, t):
    """Mean, variance and clipped log-variance of q(x_{t−1} | x_t, x_0)  (Ho et al. 2020, eqs. 6–7).

    μ̃ = β_t√ᾱ_{t−1}/(1−ᾱ_t)·x_0 + (1−ᾱ_{t−1})√α_t/(1−ᾱ_t)·x_t,  β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t)·β_t.
    """
    mean = (extract(schedule.posterior_mean_coef1, t, x_t) * x0
            + extract(schedule.posterior_mean_coef2, t, x_t) * x_t)
    var = extract(schedule.posterior_variance, t, x_t)
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, var, log_var


def x0_from_eps(schedule: Schedule, x_t, t, eps):
    """x_0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t  (inverse of eq. 4)."""
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)


def eps_from_x0(schedule: Schedule, x_t, t, x0):
    """ε = (x_t − √ᾱ_t·x_0)/√(1−ᾱ_t)."""
    return ((extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
            / extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t))


def v_from_x0_eps(schedule: Schedule, x0, t, eps):
    """v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0  (Salimans & Ho 2022, v-prediction)."""
    return (extract(schedule.sqrt_alphas_cumprod, t, x0) * eps
            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0)


def x0_from_v(schedule: Schedule, x_t, t, v):
    """x_0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v."""
    return (extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t
            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v)


def eps_from_v(schedule: Schedule, x_t, t, v):
    """ε = √(1−ᾱ_t)·x_t + √ᾱ_t·v."""
    return (extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
            + extract(schedule.sqrt_alphas_cumprod, t, x_t) * v)


def score_from_eps(schedule: Schedule, t, eps):
    """∇ log q_t(x_t) ≈ −ε/√(1−ᾱ_t)  (the score-matching view, Song & Ermon 2019; seed 002)."""
    return -eps / extract(schedule.sqrt_one_minus_alphas_cumprod, t, eps)


def eps_from_score(schedule: Schedule, t, score):
    """ε = −√(1−ᾱ_t)·score."""
    return -extract(schedule.sqrt_one_minus_alphas_cumprod, t, score) * score


# ---- conversions between a network's target and ε / x_0 ----

PREDICTIONS = ("eps", "x0", "v")


def check_prediction(prediction: str):
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def to_x0_eps(schedule: Schedule, x_t, t, pred, prediction: str):
    """(x̂_0, ε̂) from a network output that predicts ε, x_0 or v."""
    check_prediction(prediction)
    if prediction == "eps":
        return x0_from_eps(schedule, x_t, t, pred), pred
    if prediction == "x0":
        return pred, eps_from_x0(schedule, x_t, t, pred)
    return x0_from_v(schedule, x_t, t, pred), eps_from_v(schedule, x_t, t, pred)


def eps_at_level(x_t, pred, alpha, sigma, prediction: str):
    """ε̂ from a network output at a level given by its α = √ᾱ and σ = √(1 − ᾱ) rather than a
    schedule index (continuous time, between a schedule's steps): the relations of ``to_x0_eps``,
    ε = (x_t − α·x_0)/σ for x_0-prediction and ε = σ·x_t + α·v for v-prediction."""
    check_prediction(prediction)
    if prediction == "eps":
        return pred
    return (x_t - alpha * pred) / sigma if prediction == "x0" else sigma * x_t + alpha * pred


def from_eps(schedule: Schedule, x_t, t, eps, prediction: str):
    """The network target (ε, x_0 or v) that corresponds to ε at x_t."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    x0 = x0_from_eps(schedule, x_t, t, eps)
    return x0 if prediction == "x0" else v_from_x0_eps(schedule, x0, t, eps)


def target(schedule: Schedule, x0, t, eps, prediction: str):
    """The regression target of L_simple for ``prediction``."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    return x0 if prediction == "x0" else v_from_x0_eps(schedule, x0, t, eps)
