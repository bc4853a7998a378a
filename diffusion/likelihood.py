"""The full variational bound in bits/dim (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, Table 2)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion import gaussian, losses, reverse
from diffusion.schedules import Schedule


def variational_bound(model_fn: Callable, schedule: Schedule, x0, key, *, prediction="eps",
                      variance="fixed_small", decoder="discretized", cond=None):
    """−log p(x_0) ≤ L_T + Σ_{t>1} L_{t−1} + L_0 for x0 [B, ...], every term in bits/dim.

    All T steps run in one ``lax.scan`` with fresh noise per step. Returns a dict:
    ``total`` [B], ``prior`` [B] (L_T), ``terms`` [B, T] (index 0 is the decoder L_0),
    and ``mse`` [B, T] (‖ε − ε̂‖² per step, for plots).
    """
    T = schedule.num_steps
    keys = jax.random.split(key, T)

    def per_step(_, inp):
        t_scalar, k = inp
        t = jnp.full((x0.shape[0],), t_scalar, dtype=jnp.int32)
        noise = jax.random.normal(k, x0.shape, x0.dtype)
        x_t = gaussian.q_sample(schedule, x0, t, noise)
        output = model_fn(x_t, schedule.timesteps[t], **(cond or {}))
        p = reverse.reverse_gaussian(schedule, output, x_t, t, prediction=prediction, variance=variance)
        term = losses.vlb_term_bpd(schedule, p, x0, x_t, t, decoder)
        return None, (term, losses.mean_flat((p.eps - noise) ** 2))

    _, (terms, mse) = jax.lax.scan(per_step, None, (jnp.arange(T), keys))
    prior = losses.prior_bpd(schedule, x0)
    terms, mse = terms.T, mse.T
    return {"total": jnp.sum(terms, axis=1) + prior, "prior": prior, "terms": terms, "mse": mse}
