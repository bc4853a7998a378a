"""Exact denoisers for Gaussian and Gaussian-mixture data: model functions with no training.

For x_0 ~ N(μ, Σ), q_t(x_t) = N(√ᾱ_t μ, ᾱ_t Σ + (1−ᾱ_t) I), so the ideal network is
E[ε | x_t] = √(1−ᾱ_t)·C_t⁻¹(x_t − √ᾱ_t μ) with C_t = ᾱ_tΣ + (1−ᾱ_t)I; for a mixture the
same per component, weighted by the component posteriors. Data are vectors [B, D].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion.schedules import Schedule, logsnr_at_timesteps


def alphas_cumprod_at(schedule: Schedule, timesteps):
    """ᾱ at network timesteps, for a full or respaced schedule (ᾱ agrees at kept steps); at
    fractional timesteps, ᾱ = sigmoid(λ) of the continuous-time process the schedule stands for
    (``schedules.logsnr_at_timesteps``), so the oracle is exact between steps too."""
    if jnp.issubdtype(jnp.asarray(timesteps).dtype, jnp.floating):
        return jax.nn.sigmoid(2 * logsnr_at_timesteps(schedule, timesteps))
    return schedule.alphas_cumprod[jnp.searchsorted(schedule.timesteps, timesteps)]


def _component_terms(schedule: Schedule, x_t, timesteps, mean, cov):
    a = alphas_cumprod_at(schedule, timesteps)[:, None, None]
    D = mean.shape[-1]
    cov_t = a * cov + (1 - a) * jnp.eye(D, dtype=x_t.dtype)
    resid = x_t - jnp.sqrt(a[:, :, 0]) * mean
    sol = jnp.linalg.solve(cov_t, resid[..., None])[..., 0]
    log_density = -0.5 * (jnp.sum(resid * sol, -1) + jnp.linalg.slogdet(cov_t)[1] + D * jnp.log(2 * jnp.pi))
    return sol, log_density


def gaussian_eps(schedule: Schedule, mean, cov):
    """model_fn(x_t, timesteps) = E[ε | x_t] for x_0 ~ N(mean [D], cov [D, D])."""
    def model_fn(x_t, timesteps, **_):
        sol, _ = _component_terms(schedule, x_t, timesteps, mean, cov)
        return jnp.sqrt(1 - alphas_cumprod_at(schedule, timesteps))[:, None] * sol
    return model_fn


def gaussian_reverse(schedule: Schedule, mean, var):
    """The exact reverse step for x_0 ~ N(mean [D], diag(var [D])) as a ``variance="learned"`` output.

    q(x_{t−1} | x_t) is Gaussian with mean μ̃(E[x_0|x_t], x_t) and variance
    β̃_t + coef1_t²·Var[x_0|x_t], Var[x_0|x_t] = v(1−ᾱ_t)/(ᾱ_t v + 1 − ᾱ_t); ``schedule`` is the
    chain being sampled (full or respaced). Returns [B, 2D]: ε̂ and log σ².
    """
    eps_fn = gaussian_eps(schedule, mean, jnp.diag(var))

    def model_fn(x_t, timesteps, **_):
        i = jnp.searchsorted(schedule.timesteps, timesteps)
        a = schedule.alphas_cumprod[i][:, None]
        x0_var = var * (1 - a) / (a * var + 1 - a)
        rev_var = schedule.posterior_variance[i][:, None] + schedule.posterior_mean_coef1[i][:, None] ** 2 * x0_var
        return jnp.concatenate([eps_fn(x_t, timesteps), jnp.log(rev_var)], -1)
    return model_fn


def mixture_log_posterior(schedule: Schedule, means, covs, weights):
    """log p_t(k | x_t) for each component k: ``fn(x_t, timesteps) -> [B, K]`` (an exact noisy classifier)."""
    def log_post(x_t, timesteps):
        logs = jnp.stack([_component_terms(schedule, x_t, timesteps, m, c)[1]
                          for m, c in zip(means, covs)], -1) + jnp.log(jnp.asarray(weights))
        return jax.nn.log_softmax(logs, axis=-1)
    return log_post


def mixture_eps(schedule: Schedule, means, covs, weights):
    """E[ε | x_t] for x_0 ~ Σ_k w_k N(means[k], covs[k]); with ``labels`` given, the component's own."""
    log_post = mixture_log_posterior(schedule, means, covs, weights)

    def model_fn(x_t, timesteps, labels=None, **_):
        sols = jnp.stack([_component_terms(schedule, x_t, timesteps, m, c)[0]
                          for m, c in zip(means, covs)], 1)            # [B, K, D]
        K = len(means)
        post = jnp.exp(log_post(x_t, timesteps))
        if labels is not None:  # label K is the null label: the unconditional mixture
            post = jnp.where((labels < K)[:, None], jax.nn.one_hot(labels, K, dtype=post.dtype), post)
        return jnp.sqrt(1 - alphas_cumprod_at(schedule, timesteps))[:, None] * jnp.einsum("bk,bkd->bd", post, sols)
    return model_fn
