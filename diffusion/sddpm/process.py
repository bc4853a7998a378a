"""The simplified DDPM (SDDPM) of seed 004: a Gaussian reverse step q_r fitted directly to
consecutive pairs of the forward process, the seed's residual parameterisation of its mean, and
that parameterisation's ancestral sampler.

Seed 004 writes L = −KL(q_f(x_{0:T}) ‖ q_r(x_{0:T})) = c + Σ_t E_{q_f(x_0) q_f(x_t|x_0) q_f(x_{t+1}|x_t)}
[log q_r(x_t | x_{t+1})], with no posterior q(x_{t−1} | x_t, x_0). In this library's indexing
(schedule index t holds the seed's x_{t+1}; index −1 is the data) a pair is (x_{t−1}, x_t) with
x_{t−1} ~ q(x_{t−1} | x_0) and x_t = √α_t·x_{t−1} + √β_t·z, and the network is called on x_t with
timestep t, as every model here is. With ``prediction="residual"`` it outputs the seed's ε_r and
q_r(x_{t−1} | x_t) = N(x_t + ε_r(x_t, t), σ_t²); with ε, x_0 or v it is Ho et al.'s
N(μ̃(x̂_0, x_t), σ_t²) and any of their samplers reads it. The loss is ``losses.sddpm_losses``; its
minimiser is the mean E[x_{t−1} | x_t], from which Tweedie's formula gives the score and x̂_0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion import reverse
from diffusion.gaussian import extract
from diffusion.schedules import alphas_cumprod_with_clean, Schedule

LOSS = "sddpm"            # the loss that fits q_r to forward pairs
RESIDUAL = "residual"     # the prediction that is the seed's ε_r = E[x_{t−1} | x_t] − x_t
SAMPLER = "sddpm"         # the sampler that reads a residual
VARIANCES = ("fixed_small", "fixed_large", "learned")


def check_variance(variance: str, field: str = "variance", loss_field: str = "loss"):
    """Refuse a reverse variance q_r cannot have: Nichol & Dhariwal's ``learned_range`` interpolates
    between β̃_t and β_t, Ho et al.'s variances for a known x_0 and for N(0, I) data, but the step
    mixed over x_0 has variance β̃_t + coef1_t²·Var[x_0 | x_t], above β_t wherever Var[x_0 | x_t]
    exceeds 1 − ᾱ_t (as it does at low noise for any data with a density)."""
    reverse.check_variance(variance)
    if variance not in VARIANCES:
        raise ValueError(f"{field}={variance!r} does not fit {loss_field}={LOSS!r}: its reverse step mixes over x_0, "
                         "so its variance is not confined to [β̃_t, β_t]; use 'learned' (a free log-variance) or "
                         "'fixed_large' / 'fixed_small'")


def check_prediction(loss: str, prediction: str, *, loss_field: str = "loss", prediction_field: str = "prediction"):
    """Refuse the residual with any loss but the SDDPM's: only a forward pair gives its target."""
    if prediction == RESIDUAL and loss != LOSS:
        raise ValueError(f"{prediction_field}={RESIDUAL!r} is the SDDPM's ε_r, the mean of x_{{t−1}} minus x_t, which only "
                         f"{loss_field}={LOSS!r} trains (on forward pairs); with {loss_field}={loss!r} predict 'eps', 'x0' or 'v'")


def check_sampler(prediction: str, sampler: str, *, prediction_field: str = "prediction",
                  sampler_field: str = "sampler"):
    """Refuse a sampler that would misread the network: only the 'sddpm' sampler reads a residual,
    and it reads nothing else."""
    if prediction == RESIDUAL and sampler != SAMPLER:
        raise ValueError(f"{sampler_field}={sampler!r} reads the network as ε, x_0 or v, but {prediction_field}="
                         f"{RESIDUAL!r} is the SDDPM's ε_r: sample with {SAMPLER!r}")
    if sampler == SAMPLER and prediction != RESIDUAL:
        raise ValueError(f"{sampler_field}={SAMPLER!r} reads the network as the SDDPM's residual ε_r, but "
                         f"{prediction_field}={prediction!r}: sample with 'ddpm' (the same ancestral steps for "
                         f"Ho et al.'s mean), or train {prediction_field}={RESIDUAL!r}")


def check_steps(steps: int, num_steps: int, field: str = "steps"):
    """Refuse fewer sampling steps than T: the residual is one step of the training chain, and no
    respaced schedule turns it into a longer one."""
    if steps != num_steps:
        raise ValueError(f"{field}={steps}: the {SAMPLER!r} sampler takes every one of the schedule's T = {num_steps} "
                         f"steps (its network was trained on single steps of that chain); use {num_steps}")


def forward_pair(schedule: Schedule, x0, t, noise, step_noise):
    """(x_{t−1}, x_t), consecutive states of the forward process: x_{t−1} = √ᾱ_{t−1}·x_0 +
    √(1−ᾱ_{t−1})·ε (x_0 itself at t = 0), then x_t = √(1−β_t)·x_{t−1} + √β_t·z (seed 004, 重参数化).

    x0, noise ε, step_noise z: [B, ...]; t: int[B] schedule indices.
    """
    a_prev = alphas_cumprod_with_clean(schedule, t - 1).astype(x0.dtype)
    a_prev = a_prev.reshape(a_prev.shape + (1,) * (x0.ndim - 1))
    x_prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * noise
    x_t = extract(jnp.sqrt(schedule.alphas), t, x0) * x_prev + extract(jnp.sqrt(schedule.betas), t, x0) * step_noise
    return x_prev, x_t


def reverse_step(schedule: Schedule, output, x_t, t, *, prediction: str = RESIDUAL, variance: str = "fixed_large"):
    """(mean, log σ²) of q_r(x_{t−1} | x_t) from the network output [B, ..., C] (or [B, ..., 2C] with a
    learned log σ²): x_t + ε_r for the ``residual``, Ho et al.'s μ̃(x̂_0, x_t) (eq. 7) for ε, x_0 or v.
    The fixed σ_t² are Ho et al.'s two, β_t ('fixed_large', β̃_1 at t = 0) and β̃_t ('fixed_small'),
    the variances of the reverse step for N(0, I) data and for a known x_0. t: int[B]."""
    if prediction != RESIDUAL:
        p = reverse.reverse_gaussian(schedule, output, x_t, t, prediction=prediction, variance=variance)
        return p.mean, p.log_variance
    residual, var_out = reverse.split_output(output, variance)
    return x_t + residual, reverse.log_variance(schedule, t, var_out, x_t, variance)


def x0_from_mean(schedule: Schedule, x_t, t, mean):
    """E[x_0 | x_t] implied by a reverse mean μ = E[x_{t−1} | x_t], Tweedie's formula twice: for one
    forward step, √α_t·μ = x_t + β_t·∇log q_t(x_t); for the whole chain, √ᾱ_t·x̂_0 = x_t + (1−ᾱ_t)·∇log q_t(x_t).
    At t = 0 it is μ itself. x_t, mean: [B, ...]; t: int[B]."""
    score = (extract(jnp.sqrt(schedule.alphas), t, x_t) * mean - x_t) / extract(schedule.betas, t, x_t)
    return (x_t + extract(1.0 - schedule.alphas_cumprod, t, x_t) * score) / extract(schedule.sqrt_alphas_cumprod, t, x_t)


def sddpm_step(model_fn, schedule: Schedule, x_t, t, t_prev, key, *, variance="fixed_large", cond=None):
    """Ancestral step of the residual q_r: x_{t−1} = x_t + ε_r(x_t, t) + σ_t·z, no noise at t = 0; also
    returns x̂_0 (``x0_from_mean``). The network moves one step of the chain it was trained on, so it
    runs on the full schedule (``check_steps``); ``t_prev`` must be ``t − 1``."""
    del t_prev
    t_batch = jnp.full((x_t.shape[0],), t, dtype=jnp.int32)
    output = model_fn(x_t, schedule.timesteps[t_batch], **(cond or {}))
    mean, log_var = reverse_step(schedule, output, x_t, t_batch, variance=variance)
    z = jax.random.normal(key, x_t.shape, x_t.dtype)
    x_prev = mean + jnp.where(t > 0, jnp.exp(0.5 * log_var), 0.0) * z
    return x_prev.astype(x_t.dtype), x0_from_mean(schedule, x_t, t_batch, mean)
