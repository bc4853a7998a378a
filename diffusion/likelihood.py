"""The full variational bound in bits/dim (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, Table 2)."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion import gaussian, losses, reverse, schedules
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


TRACES = ("hutchinson", "exact")


def probability_flow_nll(model_fn: Callable, schedule: Schedule, x0, key, *, prediction="eps",
                         variance="fixed_small", cond=None, bins: int = 256, trace="hutchinson",
                         rtol=1e-5, atol=1e-5, max_steps: int = 4096):
    """Exact −log p(x_0) in bits/dim under the probability-flow ODE (Song et al. 2021, §4.3 and
    App. D.2), per example of x0 [B, ...], by the instantaneous change of variables.

    In u = −λ (λ = log(α/σ), α² = sigmoid(2λ)) the ODE of the VP process is
    dx/du = −σ²·x + σ·ε̂(x, u), from the data at λ_0 (schedule index 0) to the noise at λ_{T−1}, and
    log p_0(x_0) = log N(x_{T−1}; 0, I) + ∫ ∇·(dx/du) du. The network is evaluated at the
    fractional timestep of each λ (``schedules.timesteps_at_logsnr``: linear in λ between steps).
    Only ε̂ enters (a learned variance's channels are not used). ``trace``: "hutchinson" estimates
    ∇·ε̂ by zᵀ(∂ε̂/∂x)z with one Rademacher z per example (Skilling–Hutchinson, unbiased), "exact"
    sums the full Jacobian's diagonal (one forward-mode pass per dimension: small data only). The
    ODE is solved by diffrax's adaptive Tsit5 (``rtol``, ``atol``).

    ``bins`` = 256 treats x0 as 8-bit data in [−1, 1] (values 2k/255 − 1): uniform dequantisation
    within each bin of width w = 2/255, and bits/dim = (E[−log p(x_0 + u)] − D·log w)/(D·ln 2), an
    upper bound on the discrete NLL; ``bins`` = 0 treats x0 as continuous data (density in bits/dim).
    Returns ``{"bits_per_dim": [B], "prior": [B], "divergence": [B], "evaluations": int}``, the
    last the ODE solver's network evaluations (Tsit5: 6 a step, + 3; each with a forward-mode pass).
    """
    import diffrax    # the adaptive ODE solver: imported here, as only this function needs it

    if trace not in TRACES:
        raise ValueError(f"unknown trace {trace!r}; choose one of {TRACES}")
    lam = schedules.logsnr(schedule)
    if not isinstance(lam, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(lam))):
        raise ValueError("the probability-flow likelihood needs 0 < ᾱ_t < 1 at every step (λ finite); this "
                         "schedule has ᾱ = 0 at its end (zero terminal SNR): its prior is exact, drop the last step")
    batch, dims = x0.shape[0], math.prod(x0.shape[1:])
    k_deq, k_z = jax.random.split(key)
    width = 2.0 / (bins - 1) if bins else 1.0     # 1: continuous data, no offset
    if bins:
        x0 = x0 + width * (jax.random.uniform(k_deq, x0.shape, x0.dtype) - 0.5)
    z = jax.random.rademacher(k_z, x0.shape, x0.dtype)
    vector_field = _flow_and_divergence(model_fn, schedule, z, prediction=prediction, variance=variance,
                                        cond=cond, trace=trace)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), diffrax.Tsit5(), t0=-lam[0], t1=-lam[-1], dt0=None,
        y0=(x0, jnp.zeros((batch,), x0.dtype)), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps)
    x_T, divergence = solution.ys[0][-1], solution.ys[1][-1]
    prior = -0.5 * _per_example_dot(x_T, x_T) - 0.5 * dims * math.log(2 * math.pi)
    nll = -(prior + divergence) - dims * math.log(width)
    return {"bits_per_dim": nll / (dims * losses.LN2), "prior": -prior / (dims * losses.LN2),
            "divergence": divergence / (dims * losses.LN2),
            "evaluations": 6 * solution.stats["num_steps"] + 3}   # + the first, and 2 choosing the first step size


def _per_example_dot(a, b):
    """Σ a·b over all but the batch axis: [B, ...] × [B, ...] → [B] (either may broadcast, as [1, ...])."""
    product = a * b
    return jnp.sum(product.reshape(product.shape[0], -1), axis=1)


def _flow_and_divergence(model_fn: Callable, schedule: Schedule, z, *, prediction, variance, cond, trace):
    """The vector field ``(u, (x, ·), _) -> (dx/du, ∇·(dx/du) [B])`` of the probability-flow ODE in
    u = −λ, dx/du = −σ²·x + σ·ε̂(x, u) (``probability_flow_nll``), with the divergence by
    Skilling–Hutchinson (zᵀ(∂f/∂x)z with the Rademacher z [B, ...]) or, for ``trace="exact"``, the
    Jacobian's diagonal, one forward-mode pass per dimension."""
    def drift(u, x):
        alpha, sigma = jnp.sqrt(jax.nn.sigmoid(-2 * u)), jnp.sqrt(jax.nn.sigmoid(2 * u))
        timesteps = jnp.full((x.shape[0],), schedules.timesteps_at_logsnr(schedule, -u),
                             jnp.promote_types(x.dtype, jnp.float32))     # bf16 cannot tell 998 from 999
        pred, _ = reverse.split_output(model_fn(x, timesteps, **(cond or {})), variance)
        return -sigma ** 2 * x + sigma * gaussian.eps_at_level(x, pred, alpha, sigma, prediction)

    def vector_field(u, state, _):
        x, _ = state
        f = lambda y: drift(u, y)
        if trace == "hutchinson":
            dx, jz = jax.jvp(f, (x,), (z,))
            return dx, _per_example_dot(z, jz)
        dims = math.prod(x.shape[1:])
        basis = jnp.eye(dims, dtype=x.dtype).reshape((dims, 1) + x.shape[1:])
        dx = f(x)
        diag = jax.vmap(lambda e: _per_example_dot(e, jax.jvp(f, (x,), (jnp.broadcast_to(e, x.shape),))[1]))(basis)
        return dx, jnp.sum(diag, axis=0)
    return vector_field
