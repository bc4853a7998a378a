"""Solvers of the probability-flow ODE (and its ancestral SDE), as steps of ``samplers.sample``'s
common signature on the kept indices of a discrete VP schedule: DPM-Solver++(2M) on the λ grid
(Lu et al. 2022), and Heun's method and Euler ancestral in the σ-parameterisation of Karras et al.
2022 (EDM) on their ρ-grid of σ.

The σ-parameterisation of a VP model: x̃ = x/√ᾱ, σ = √((1 − ᾱ)/ᾱ), and the ODE dx̃/dσ =
(x̃ − x̂_0)/σ. A grid in σ (or λ) is rounded to the nearest schedule indices, and the network is
evaluated exactly at those indices (never at an interpolated t), so the model sees only the
timesteps it was trained on.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import reverse
from diffusion.schedules import Schedule, alphas_cumprod_with_clean, logsnr


def _distinct_descending(idx: np.ndarray) -> jax.Array:
    """Indices made strictly decreasing and ≥ 0, moving as few as possible: where a grid is finer
    than the schedule's steps, they become consecutive."""
    idx = np.array(idx)
    for k in range(1, len(idx)):
        idx[k] = min(idx[k], idx[k - 1] - 1)
    idx[-1] = max(idx[-1], 0)
    for k in range(len(idx) - 2, -1, -1):
        idx[k] = max(idx[k], idx[k + 1] + 1)
    return jnp.asarray(idx, jnp.int32)


def _nearest(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.abs(values[None, :] - targets[:, None]).argmin(1)


def logsnr_spaced(schedule: Schedule, steps: int) -> jax.Array:
    """``steps`` descending schedule indices whose λ = ½·log(ᾱ/(1 − ᾱ)) are as near uniform as the
    discrete steps allow, from the noisiest to the cleanest (the λ grid of Lu et al. 2022, §3.3);
    indices are strictly decreasing, so where λ changes faster than one step they are consecutive."""
    with np.errstate(divide="ignore"):
        lam = 0.5 * np.log(np.asarray(schedule.snr, np.float64))
    top = _last_finite(lam)
    return _distinct_descending(_nearest(lam[:top + 1], np.linspace(lam[top], lam[0], steps)))


def _last_finite(values: np.ndarray) -> int:
    """The last index whose value is finite: a zero-terminal-SNR schedule's last step has λ = −∞
    and σ = ∞, from which no grid can be spaced, so the λ and σ grids start one step earlier."""
    return int(np.flatnonzero(np.isfinite(values))[-1])


def _lambda(schedule: Schedule, t):
    """λ_t = log(α/σ) = ½·log SNR_t at index t (Lu et al. 2022); +∞ for clean data (t = −1)."""
    return jnp.where(t >= 0, logsnr(schedule)[jnp.maximum(t, 0)], jnp.inf)


def _sigma(schedule: Schedule, t):
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) at index t (Karras et al. 2022, Table 1, VP), the schedule's
    ``sqrt_recipm1_alphas_cumprod``; 0 for clean data (t = −1)."""
    return jnp.where(t >= 0, schedule.sqrt_recipm1_alphas_cumprod[jnp.maximum(t, 0)], 0.0)


def dpm_solver_pp_2m_step(model_fn, schedule: Schedule, x_t, t, t_prev, key, *, previous, prediction="eps",
                          variance="fixed_small", clip=None, clip_percentile=0.995, clip_max=None, cond=None):
    """DPM-Solver++(2M), the multistep second-order solver of the probability-flow ODE in data
    prediction (Lu et al. 2022, "DPM-Solver++", Algorithm 2), on the λ grid of the kept steps.

    With h = λ_{t′} − λ_t: x_{t′} = (σ_{t′}/σ_t)·x_t − α_{t′}·(e^{−h} − 1)·D, where D = x̂_0 at the
    first step (first order) and D = (1 + 1/2r)·x̂_0 − (1/2r)·x̂_0^{before}, r = h_before / h,
    after it. The step to clean data (λ = ∞) is first order, D = x̂_0: the lower-order final step.
    ``previous`` = (x̂_0 of the step before, its index; −2 for none), carried by ``sample``.
    """
    del key
    p = reverse.predict(model_fn, schedule, x_t, t, cond, prediction=prediction, variance=variance, clip=clip,
                        clip_percentile=clip_percentile, clip_max=clip_max)
    x0_before, t_before = previous
    a_t, a_prev = alphas_cumprod_with_clean(schedule, t), alphas_cumprod_with_clean(schedule, t_prev)
    h = _lambda(schedule, t_prev) - _lambda(schedule, t)
    second_order = (t_before >= 0) & (t_prev >= 0)
    h_before = _lambda(schedule, t) - _lambda(schedule, t_before)
    r = jnp.where(second_order, h_before / jnp.where(second_order, h, 1.0), 1.0)
    D = jnp.where(second_order, (1 + 0.5 / r) * p.x0 - (0.5 / r) * x0_before, p.x0)
    x_prev = jnp.sqrt((1 - a_prev) / (1 - a_t)) * x_t - jnp.sqrt(a_prev) * jnp.expm1(-h) * D
    return x_prev.astype(x_t.dtype), p.x0


def _index_nearest_logsnr(schedule: Schedule, lam, above, below):
    """The schedule index whose λ is nearest ``lam`` among the indices strictly between ``below``
    and ``above`` (below < index < above)."""
    index = jnp.arange(schedule.num_steps)
    gap = jnp.abs(logsnr(schedule) - lam)
    return jnp.argmin(jnp.where((index > below) & (index < above), gap, jnp.inf)).astype(jnp.int32)


def dpm_solver_step(model_fn, schedule: Schedule, x_t, t, t_prev, key, *, order=3, prediction="eps",
                    variance="fixed_small", clip=None, clip_percentile=0.995, clip_max=None, cond=None):
    """One singlestep DPM-Solver step of order 1, 2 or 3 in noise prediction (Lu et al. 2022,
    "DPM-Solver", §3.3, DPM-Solver-1/2/3), from index t to t′ with h = λ_{t′} − λ_t, λ = log(α/σ):

    order 1 (= DDIM): x_{t′} = (α_{t′}/α_t)·x_t − σ_{t′}·(e^h − 1)·ε̂_t;
    order 2: ε̂ also at s₁ with λ_{s₁} ≈ λ_t + h/2,
             x_{t′} = order 1 − σ_{t′}/(2r₁)·(e^h − 1)·(ε̂_{s₁} − ε̂_t);
    order 3: ε̂ at s₁, s₂ near λ_t + h/3, λ_t + 2h/3, combined by the Taylor form of the reference
    implementation (``dpm_solver_third_update``, solver_type 'taylor'), third order for any r₁ ≠ r₂.

    The intermediate points are schedule indices (the λ nearest the target; the network only sees
    trained timesteps) and the formulas use their actual r = (λ_s − λ_t)/h. Orders 1 and 2 keep
    their order for any r; order 3 cancels the O(h²) error of its first-order stage u₁ only when
    r₂ = 2/3, so it is third order while a step spans enough indices for r₂ to land near 2/3
    (tests/test_samplers.py: error slope −3 up to 48 λ-uniform steps between indices 999 and 100
    of the linear T = 1000 schedule, flattening beyond) and no worse than second order after. A step
    spanning fewer indices than ``order`` has no room for them and is taken at the order that fits;
    the step to clean data (λ = ∞) is first order, x̂_0. Costs as many network evaluations as the order taken.
    """
    check_order(order)
    kw = dict(prediction=prediction, variance=variance, clip=clip, clip_percentile=clip_percentile, clip_max=clip_max)
    p = reverse.predict(model_fn, schedule, x_t, t, cond, **kw)
    a_prev = alphas_cumprod_with_clean(schedule, t_prev)
    first = jnp.sqrt(a_prev) * p.x0 + jnp.sqrt(1 - a_prev) * p.eps        # order 1, also to λ = ∞
    lam_t, t_end = _lambda(schedule, t), jnp.maximum(t_prev, 0)
    h = _lambda(schedule, t_end) - lam_t
    alpha = lambda i: schedule.sqrt_alphas_cumprod[i]
    sigma = lambda i: schedule.sqrt_one_minus_alphas_cumprod[i]
    r_of = lambda i: (_lambda(schedule, i) - lam_t) / h
    eps_at = lambda x, i: reverse.predict(model_fn, schedule, x, i, cond, **kw).eps

    def second(_):
        s1 = _index_nearest_logsnr(schedule, lam_t + h / 2, t, t_prev)
        r1 = r_of(s1)
        u1 = alpha(s1) / alpha(t) * x_t - sigma(s1) * jnp.expm1(r1 * h) * p.eps
        phi_1 = jnp.expm1(h)
        return (alpha(t_end) / alpha(t) * x_t - sigma(t_end) * phi_1 * p.eps
                - sigma(t_end) * phi_1 / (2 * r1) * (eps_at(u1, s1) - p.eps))

    def third(_):
        s2 = _index_nearest_logsnr(schedule, lam_t + 2 * h / 3, t - 1, t_prev)     # leaves room for s₁
        s1 = _index_nearest_logsnr(schedule, lam_t + h / 3, t, s2)
        r1, r2 = r_of(s1), r_of(s2)
        u1 = alpha(s1) / alpha(t) * x_t - sigma(s1) * jnp.expm1(r1 * h) * p.eps
        d1_0 = (eps_at(u1, s1) - p.eps) / r1
        phi_22 = jnp.expm1(r2 * h) / (r2 * h) - 1
        u2 = alpha(s2) / alpha(t) * x_t - sigma(s2) * jnp.expm1(r2 * h) * p.eps - sigma(s2) * r2 * phi_22 * d1_0
        d1_1 = (eps_at(u2, s2) - p.eps) / r2
        d1 = (r2 * d1_0 - r1 * d1_1) / (r2 - r1)                    # ≈ h·ε̂′
        d2 = 2 * (d1_1 - d1_0) / (r2 - r1)                          # ≈ h²·ε̂″
        phi_1 = jnp.expm1(h)
        phi_2 = phi_1 / h - 1
        phi_3 = phi_2 / h - 0.5
        return (alpha(t_end) / alpha(t) * x_t - sigma(t_end) * phi_1 * p.eps
                - sigma(t_end) * phi_2 * d1 - sigma(t_end) * phi_3 * d2)

    room = jnp.where(t_prev >= 0, jnp.minimum(order, t - t_prev), 1)   # indices between, plus one
    x_prev = jax.lax.switch(room - 1, [lambda _: first, second, third][:order], None)
    return x_prev.astype(x_t.dtype), p.x0


DPM_SOLVER_ORDERS = (1, 2, 3)


def check_order(order):
    """Refuse an order singlestep DPM-Solver does not have."""
    if order not in DPM_SOLVER_ORDERS:
        raise ValueError(f"DPM-Solver order={order!r} does not exist; choose one of {DPM_SOLVER_ORDERS} "
                         "(the multistep second-order solver is 'dpmpp_2m')")


def karras_spaced(schedule: Schedule, steps: int, rho: float = 7.0) -> jax.Array:
    """``steps`` descending schedule indices nearest to Karras et al.'s σ grid (2022, eq. 5):
    σ_i = (σ_max^{1/ρ} + i/(n − 1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ from the schedule's largest σ to
    its smallest (the largest finite one: see ``_last_finite``), ρ = 7; indices strictly decreasing."""
    sigma = np.asarray(schedule.sqrt_recipm1_alphas_cumprod, np.float64)
    sigma = sigma[:_last_finite(sigma) + 1]
    ramp = np.linspace(0, 1, steps)
    grid = (sigma[-1] ** (1 / rho) + ramp * (sigma[0] ** (1 / rho) - sigma[-1] ** (1 / rho))) ** rho
    return _distinct_descending(_nearest(sigma, grid))


def _denoised(model_fn, schedule, x_t, t, cond, kw):
    """(x̃ = x_t/√ᾱ_t, σ_t, x̂_0) at schedule index t."""
    x0 = reverse.predict(model_fn, schedule, x_t, t, cond, **kw).x0
    return x_t * schedule.sqrt_recip_alphas_cumprod[t], _sigma(schedule, t), x0


def heun_step(model_fn, schedule: Schedule, x_t, t, t_prev, key, *, churn=0.0, noise_scale=1.0,
              prediction="eps", variance="fixed_small", clip=None, clip_percentile=0.995, clip_max=None, cond=None):
    """Heun's second-order step of dx̃/dσ = (x̃ − x̂_0)/σ from σ_t to σ_{t′} (Karras et al. 2022,
    Algorithm 2); the step to clean data (σ = 0) is Euler's, as there.

    ``churn`` = γ > 0 first raises the noise to σ̂, the σ of the index nearest (1 + γ)·σ_t, by
    adding fresh noise of variance σ̂² − σ_t² (scaled by ``noise_scale``), and steps from there:
    EDM's stochastic sampler, with γ = min(S_churn/N, √2 − 1) as the paper sets it.
    """
    kw = dict(prediction=prediction, variance=variance, clip=clip, clip_percentile=clip_percentile, clip_max=clip_max)
    sigma = schedule.sqrt_recipm1_alphas_cumprod
    if churn:
        t_hat = jnp.argmin(jnp.abs(sigma - (1 + churn) * sigma[t])).astype(jnp.int32)   # the index nearest σ̂
        x_tilde = x_t * schedule.sqrt_recip_alphas_cumprod[t]
        z = jax.random.normal(key, x_t.shape, x_t.dtype)
        # σ̂² − σ_t² is 0 when t̂ = t, and a fused multiply-add can round it just below 0.
        x_tilde = x_tilde + noise_scale * jnp.sqrt(jnp.maximum(sigma[t_hat] ** 2 - sigma[t] ** 2, 0.0)) * z
        t = t_hat
        x_t = x_tilde * schedule.sqrt_alphas_cumprod[t]
    x_tilde, s, x0 = _denoised(model_fn, schedule, x_t, t, cond, kw)
    a_prev, s_prev = alphas_cumprod_with_clean(schedule, t_prev), _sigma(schedule, t_prev)
    d = (x_tilde - x0) / s
    euler = x_tilde + (s_prev - s) * d

    def corrected(_):
        _, _, x0_prev = _denoised(model_fn, schedule, euler * jnp.sqrt(a_prev), t_prev, cond, kw)
        return x_tilde + (s_prev - s) * 0.5 * (d + (euler - x0_prev) / s_prev)

    x_tilde_prev = jax.lax.cond(t_prev >= 0, corrected, lambda _: euler, None)
    return (x_tilde_prev * jnp.sqrt(a_prev)).astype(x_t.dtype), x0


def euler_ancestral_step(model_fn, schedule: Schedule, x_t, t, t_prev, key, *, prediction="eps",
                         variance="fixed_small", clip=None, clip_percentile=0.995, clip_max=None, cond=None):
    """Euler ancestral (k-diffusion's ``sample_euler_ancestral`` at η = 1): an Euler step of the
    σ-ODE down to σ_down, then fresh noise σ_up, with σ_up = √(σ_{t′}²(σ_t² − σ_{t′}²)/σ_t²) and
    σ_down = √(σ_{t′}² − σ_up²), so that x̃ has the marginal variance of level t′. (No η: the
    deterministic end of that family is ``heun``'s Euler half, or DDIM.)"""
    kw = dict(prediction=prediction, variance=variance, clip=clip, clip_percentile=clip_percentile, clip_max=clip_max)
    x_tilde, s, x0 = _denoised(model_fn, schedule, x_t, t, cond, kw)
    a_prev, s_prev = alphas_cumprod_with_clean(schedule, t_prev), _sigma(schedule, t_prev)
    s_up = jnp.minimum(s_prev, jnp.sqrt(s_prev ** 2 * (s ** 2 - s_prev ** 2) / s ** 2))
    s_down = jnp.sqrt(jnp.maximum(s_prev ** 2 - s_up ** 2, 0.0))   # 0 at the last step, where s_up = s_prev
    z = jax.random.normal(key, x_t.shape, x_t.dtype)
    x_tilde_prev = x_tilde + (s_down - s) * (x_tilde - x0) / s + s_up * z
    return (x_tilde_prev * jnp.sqrt(a_prev)).astype(x_t.dtype), x0
