"""From a raw network output to the reverse-process Gaussian p_θ(x_{t−1} | x_t).

Covers the prediction targets (ε, x_0, v), the four variance choices of Ho et al.
2020 and Nichol & Dhariwal 2021, and x_0 clipping (static, or Imagen's dynamic
thresholding, Saharia et al. 2022 §2.3).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from diffusion import gaussian
from diffusion.gaussian import extract
from diffusion.schedules import Schedule

VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")
THRESHOLDS = (None, "static", "dynamic")


class ReverseGaussian(NamedTuple):
    """p_θ(x_{t−1} | x_t) = N(mean, exp(log_variance)) and the x̂_0, ε̂ it was built from."""
    mean: jax.Array
    variance: jax.Array
    log_variance: jax.Array
    x0: jax.Array
    eps: jax.Array


def check_variance(variance: str):
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")


def output_channels(data_channels: int, variance: str) -> int:
    """Channels the network must emit: doubled when it also predicts the variance."""
    check_variance(variance)
    return 2 * data_channels if variance.startswith("learned") else data_channels


def split_output(output, variance: str):
    """(prediction, variance output or None) from a network output [B, ..., C or 2C]."""
    check_variance(variance)
    if variance.startswith("learned"):
        return jnp.split(output, 2, axis=-1)
    return output, None


def static_threshold(x0):
    """Clip x̂_0 to [−1, 1] (Ho et al. 2020's sampler)."""
    return jnp.clip(x0, -1.0, 1.0)


def dynamic_threshold(x0, percentile: float = 0.995, max_value: Optional[float] = None):
    """Imagen's dynamic thresholding: s = max(1, quantile_p |x̂_0|) per example; clip to [−s, s], divide by s.

    ``max_value`` bounds s from above (diffusers' ``sample_max_value``; None, as in Imagen, leaves
    it unbounded; 1 is static clipping). The quantile is taken in x̂_0's own precision (float32 at
    least: bf16 cannot rank 784 values)."""
    if max_value is not None and not max_value >= 1:
        raise ValueError(f"the dynamic threshold's upper bound max_value={max_value!r} must be >= 1 (s is at least 1)")
    flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.promote_types(x0.dtype, jnp.float32))
    s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
    s = (s if max_value is None else jnp.minimum(s, max_value)).astype(x0.dtype)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -s, s) / s


def threshold(x0, kind: Optional[str], percentile: float = 0.995, max_value: Optional[float] = None):
    """Apply ``kind`` ∈ {None, "static", "dynamic"} to x̂_0 (``percentile`` and ``max_value``: the
    dynamic one's)."""
    if kind not in THRESHOLDS:
        raise ValueError(f"unknown threshold {kind!r}; choose one of {THRESHOLDS}")
    if kind == "static":
        return static_threshold(x0)
    if kind == "dynamic":
        return dynamic_threshold(x0, percentile, max_value)
    return x0


def log_variance(schedule: Schedule, t, var_out, x_t, variance: str):
    """log σ_t² for each variance choice.

    fixed_small: log β̃_t (clipped at t=0); fixed_large: log β_t with β̃_1 at the first step
    (Ho et al. 2020, §3.2); learned: the network's log σ²; learned_range: v·log β_t + (1−v)·log β̃_t
    with v = (out + 1)/2 (Nichol & Dhariwal 2021, eq. 15).
    """
    check_variance(variance)
    log_small = extract(schedule.posterior_log_variance_clipped, t, x_t)
    if variance == "fixed_small":
        return jnp.broadcast_to(log_small, x_t.shape)
    if variance == "fixed_large":
        large = schedule.betas.at[0].set(schedule.posterior_variance[1 % schedule.num_steps])
        return jnp.broadcast_to(extract(jnp.log(large), t, x_t), x_t.shape)
    if variance == "learned":
        return var_out
    frac = (var_out + 1.0) / 2.0
    return frac * extract(jnp.log(schedule.betas), t, x_t) + (1.0 - frac) * log_small


def reverse_gaussian(schedule: Schedule, output, x_t, t, *, prediction: str = "eps",
                     variance: str = "fixed_small", clip: Optional[str] = None,
                     clip_percentile: float = 0.995, clip_max: Optional[float] = None) -> ReverseGaussian:
    """p_θ(x_{t−1} | x_t) from the network output: μ_θ = μ̃(x̂_0, x_t)  (Ho et al. 2020, eq. 11 via eq. 7).

    output: [B, ..., C] (or 2C with a learned variance); x_t: [B, ..., C]; t: int[B] schedule indices.
    """
    pred, var_out = split_output(output, variance)
    x0, eps = gaussian.to_x0_eps(schedule, x_t, t, pred, prediction)
    if clip is not None:
        x0 = threshold(x0, clip, clip_percentile, clip_max)
        eps = gaussian.eps_from_x0(schedule, x_t, t, x0)
    mean, _, _ = gaussian.q_posterior(schedule, x0, x_t, t)
    log_var = log_variance(schedule, t, var_out, x_t, variance)
    return ReverseGaussian(mean, jnp.exp(log_var), log_var, x0, eps)


def predict(model_fn, schedule: Schedule, x_t, t, cond=None, *, prediction: str = "eps", variance: str = "fixed_small",
            clip: Optional[str] = None, clip_percentile: float = 0.995,
            clip_max: Optional[float] = None) -> ReverseGaussian:
    """``reverse_gaussian`` of the network called at the scalar schedule index ``t`` on x_t [B, ...]:
    what every sampler's step starts from (x̂_0, ε̂ and p_θ(x_{t−1} | x_t))."""
    t_batch = jnp.full((x_t.shape[0],), t, dtype=jnp.int32)
    output = model_fn(x_t, schedule.timesteps[t_batch], **(cond or {}))
    return reverse_gaussian(schedule, output, x_t, t_batch, prediction=prediction, variance=variance,
                            clip=clip, clip_percentile=clip_percentile, clip_max=clip_max)
