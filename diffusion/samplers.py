"""Reverse steps and compiled sampling loops.

Every step has one signature, ``step(model_fn, schedule, x_t, t, t_prev, key, **kw) -> (x_prev, x0)``:
it moves x from level ``t`` to level ``t_prev`` (−1 is clean data) and also returns its x̂_0.
``t`` and ``t_prev`` are scalar schedule indices; ``model_fn(x_t, timesteps, **cond)`` is the network.
``sample`` runs a whole trajectory in one ``lax.scan``; ``plan`` turns a sampler's name and step
count into the step, the schedule it runs on and its timesteps (``SAMPLERS`` is the table).
"""
from __future__ import annotations

import dataclasses
import inspect
import numbers
from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import gaussian, ode_solvers, reverse
from diffusion.schedules import alphas_cumprod_with_clean, respace, Schedule, space_timesteps, SPACING_NAMES
from diffusion.sddpm import process


def ddpm_step(model_fn, schedule: Schedule, x_t, t, t_prev, key, *, prediction="eps",
              variance="fixed_small", clip=None, clip_percentile=0.995, clip_max=None, cond=None):
    """Ancestral step x_{t−1} = μ_θ(x_t, t) + σ_t·z, no noise at t = 0 (Ho et al. 2020, Algorithm 2).

    Moves one step of ``schedule`` (``t_prev`` must be ``t − 1``); for strided sampling pass a
    respaced schedule.
    """
    del t_prev
    p = reverse.predict(model_fn, schedule, x_t, t, cond, prediction=prediction, variance=variance, clip=clip,
                        clip_percentile=clip_percentile, clip_max=clip_max)
    z = jax.random.normal(key, x_t.shape, x_t.dtype)
    x_prev = p.mean + jnp.where(t > 0, jnp.exp(0.5 * p.log_variance), 0.0) * z
    return x_prev, p.x0


def ddim_step(model_fn, schedule: Schedule, x_t, t, t_prev, key, *, eta=0.0, prediction="eps",
              variance="fixed_small", clip=None, clip_percentile=0.995, clip_max=None, cond=None):
    """Generalised step from t to any earlier t′ (Song et al. 2021, eq. 12 with σ of eq. 16).

    x_{t′} = √ᾱ_{t′}·x̂_0 + √(1 − ᾱ_{t′} − σ²)·ε̂ + σ·z,
    σ = η·√((1−ᾱ_{t′})/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t′}); η = 0 is deterministic, η = 1 is DDPM's β̃.
    """
    p = reverse.predict(model_fn, schedule, x_t, t, cond, prediction=prediction, variance=variance, clip=clip,
                        clip_percentile=clip_percentile, clip_max=clip_max)
    a_t, a_prev = alphas_cumprod_with_clean(schedule, t), alphas_cumprod_with_clean(schedule, t_prev)
    sigma = eta * jnp.sqrt((1 - a_prev) / (1 - a_t)) * jnp.sqrt(1 - a_t / a_prev)
    direction = jnp.sqrt(jnp.maximum(1 - a_prev - sigma ** 2, 0.0))
    z = jax.random.normal(key, x_t.shape, x_t.dtype)
    x_prev = (jnp.sqrt(a_prev) * p.x0 + direction * p.eps + sigma * z).astype(x_t.dtype)
    return x_prev, p.x0


def langevin_correct(model_fn, schedule: Schedule, x, t, key, *, n_steps=1, snr=0.16,
                     prediction="eps", variance="fixed_small", cond=None):
    """``n_steps`` of Langevin dynamics x ← x + δ·s + √(2δ)·z targeting q_t, with s = −ε̂/√(1−ᾱ_t).

    δ = 2·α_t·(snr·‖z‖/‖s‖)² with the norms averaged over the batch, as in Song et al. 2021's
    code (Algorithm 5; Song & Ermon 2019): per-example norms blow up on low-dimensional data.
    """
    t_batch = jnp.full((x.shape[0],), t, dtype=jnp.int32)

    def one(x, k):
        output = model_fn(x, schedule.timesteps[t_batch], **(cond or {}))
        pred, _ = reverse.split_output(output, variance)
        _, eps = gaussian.to_x0_eps(schedule, x, t_batch, pred, prediction)
        score = gaussian.score_from_eps(schedule, t_batch, eps)
        z = jax.random.normal(k, x.shape, x.dtype)
        norm = lambda a: jnp.mean(jnp.sqrt(jnp.sum(a.reshape(a.shape[0], -1) ** 2, axis=1)))
        delta = 2 * schedule.alphas[t] * (snr * norm(z) / norm(score)) ** 2
        return x + delta * score + jnp.sqrt(2 * delta) * z, None

    return jax.lax.scan(one, x, jax.random.split(key, n_steps))[0]


def langevin_step(model_fn, schedule: Schedule, x_t, t, t_prev, key, *, n_steps=10, snr=0.16,
                  prediction="eps", variance="fixed_small", clip=None, clip_percentile=0.995, clip_max=None, cond=None):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): ``n_steps`` Langevin steps at
    the next noise level t′; at t′ = −1 the last level is denoised with Tweedie's x̂_0."""
    p = reverse.predict(model_fn, schedule, x_t, t, cond, prediction=prediction, variance=variance, clip=clip,
                        clip_percentile=clip_percentile, clip_max=clip_max)
    x = langevin_correct(model_fn, schedule, x_t, jnp.maximum(t_prev, 0), key, n_steps=n_steps,
                         snr=snr, prediction=prediction, variance=variance, cond=cond)
    return jnp.where(t_prev >= 0, x, p.x0), p.x0


def predictor_corrector_step(model_fn, schedule: Schedule, x_t, t, t_prev, key, *, n_steps=1,
                             snr=0.16, prediction="eps", variance="fixed_small", clip=None,
                             clip_percentile=0.995, clip_max=None, cond=None):
    """A DDPM ancestral predictor followed by ``n_steps`` Langevin corrector steps at t − 1
    (Song et al. 2021, Algorithm 3, VP form)."""
    k_pred, k_corr = jax.random.split(key)
    kw = dict(prediction=prediction, variance=variance, cond=cond)
    x, x0 = ddpm_step(model_fn, schedule, x_t, t, t_prev, k_pred, clip=clip,
                      clip_percentile=clip_percentile, clip_max=clip_max, **kw)
    corrected = langevin_correct(model_fn, schedule, x, jnp.maximum(t - 1, 0), k_corr,
                                 n_steps=n_steps, snr=snr, **kw)
    return jnp.where(t > 0, corrected, x), x0


def sample(step: Callable, model_fn: Callable, schedule: Schedule, x_T, key, *,
           timesteps: Optional[jax.Array] = None, keep_every: int = 0, cond=None, t_end: int = -1, **step_kwargs):
    """Run ``step`` from x_T [B, ...] down the descending schedule indices ``timesteps``
    (default: every step, T−1 … 0), ending at clean data (``t_end`` = −1) or, truncated, at level
    ``t_end`` ≥ 0 (``cascade.truncate``), inside one ``lax.scan``.

    A multistep solver (a step with a ``previous`` parameter) is also handed the x̂_0 of the step
    before and that step's index, ``(x̂_0, t)``; before the first step the index is −2 (none).

    With ``keep_every = k > 0`` also returns ``{"x_t": [F, B, ...], "x0": [F, B, ...]}``: the state
    before every k-th step and its x̂_0, followed by the final sample.
    """
    if timesteps is None:
        timesteps = jnp.arange(schedule.num_steps - 1, -1, -1)
    timesteps = jnp.asarray(timesteps, jnp.int32)
    n = timesteps.shape[0]
    t_prevs = jnp.concatenate([timesteps[1:], jnp.array([t_end], jnp.int32)])
    keys = jax.random.split(key, n)
    multistep = "previous" in inspect.signature(step).parameters
    memory = (jnp.zeros_like(x_T), jnp.array(-2, jnp.int32)) if multistep else None

    def advance(x, memory, i):
        """(x at the next level, its x̂_0, the memory for the step after)."""
        extra = {"previous": memory} if multistep else {}
        x_next, x0 = step(model_fn, schedule, x, timesteps[i], t_prevs[i], keys[i], cond=cond,
                          **extra, **step_kwargs)
        return x_next, x0, (x0, timesteps[i]) if multistep else None

    if keep_every <= 0:
        def body(carry, i):
            x_next, _, memory = advance(*carry, i)
            return (x_next, memory), None
        return jax.lax.scan(body, (x_T, memory), jnp.arange(n))[0][0]

    frames = -(-n // keep_every)
    buffers = (jnp.zeros((frames,) + x_T.shape, x_T.dtype),) * 2

    def body(carry, i):
        x, memory, (xs, x0s) = carry
        x_next, x0, memory = advance(x, memory, i)
        slot, keep = i // keep_every, i % keep_every == 0
        xs = jax.lax.dynamic_update_index_in_dim(xs, jnp.where(keep, x, xs[slot]), slot, 0)
        x0s = jax.lax.dynamic_update_index_in_dim(x0s, jnp.where(keep, x0, x0s[slot]), slot, 0)
        return (x_next, memory, (xs, x0s)), None

    (x0, _, (xs, x0s)), _ = jax.lax.scan(body, (x_T, memory, buffers), jnp.arange(n))
    return x0, {"x_t": jnp.concatenate([xs, x0[None]]), "x0": jnp.concatenate([x0s, x0[None]])}


def ddim_invert(model_fn, schedule: Schedule, x0, *, timesteps=None, fixed_point_iters=0,
                prediction="eps", variance="fixed_small", cond=None):
    """Deterministic DDIM encoding x_0 → x_T through the ascending ``timesteps`` (Song et al. 2021,
    §5.4, eq. 14): x_{t′} = √ᾱ_{t′}·x̂_0 + √(1−ᾱ_{t′})·ε̂ with ε̂ taken at the lower level.

    ``fixed_point_iters = k > 0`` re-evaluates ε̂ at the upper level k times, solving the η = 0
    sampling step for its input, so that ``ddim_step`` undoes each step to round-off (fixed-point
    inversion, Pan et al. 2023).
    """
    if timesteps is None:
        timesteps = jnp.arange(schedule.num_steps)
    timesteps = jnp.asarray(timesteps, jnp.int32)
    t_from = jnp.concatenate([jnp.array([-1], jnp.int32), timesteps[:-1]])

    def eps_at(x, t):
        t_batch = jnp.full((x.shape[0],), jnp.maximum(t, 0), dtype=jnp.int32)
        output = model_fn(x, schedule.timesteps[t_batch], **(cond or {}))
        pred, _ = reverse.split_output(output, variance)
        return gaussian.to_x0_eps(schedule, x, t_batch, pred, prediction)[1]

    def up(x, ts):
        lo, hi = ts
        a_lo, a_hi = alphas_cumprod_with_clean(schedule, lo), alphas_cumprod_with_clean(schedule, hi)
        move = lambda eps: (jnp.sqrt(a_hi / a_lo) * (x - jnp.sqrt(1 - a_lo) * eps)
                            + jnp.sqrt(1 - a_hi) * eps).astype(x.dtype)
        # From clean data (level −1) the network is first asked at the level being reached.
        x_hi = move(eps_at(x, jnp.where(lo >= 0, lo, hi)))
        x_hi = jax.lax.fori_loop(0, fixed_point_iters, lambda _, y: move(eps_at(y, hi)), x_hi)
        return x_hi, None

    return jax.lax.scan(up, x0, (t_from, timesteps))[0]


def slerp(z0, z1, alpha):
    """Spherical interpolation between latents z0, z1 [B, ...] at fraction alpha (Song et al. 2021, §5.3)."""
    flat0, flat1 = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    cos = jnp.sum(flat0 * flat1, 1) / (jnp.linalg.norm(flat0, axis=1) * jnp.linalg.norm(flat1, axis=1))
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0)).reshape((-1,) + (1,) * (z0.ndim - 1))
    return (jnp.sin((1 - alpha) * theta) * z0 + jnp.sin(alpha * theta) * z1) / jnp.sin(theta)


def spaced(schedule: Schedule, spec) -> jax.Array:
    """Descending schedule indices for sampling on a sub-sequence τ (``schedules.space_timesteps``)."""
    return jnp.asarray(space_timesteps(schedule.num_steps, spec)[::-1].copy(), jnp.int32)


SPACINGS = {"time": spaced, "logsnr": ode_solvers.logsnr_spaced,
            "karras": ode_solvers.karras_spaced}


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A reverse step and how it covers fewer steps than T: ``respaced`` steps move one index at a
    time, so they run on a respaced schedule (Nichol & Dhariwal 2021, §4); the others jump between
    kept indices of the full schedule (Song et al. 2021, §4.2), chosen evenly in t or in λ
    (``spacing``, a key of ``SPACINGS``)."""
    step: Callable
    respaced: bool
    spacing: str = "time"
    stages: int = 1          # network evaluations per step, except the last (to clean data): one


def _dpm_solver(order: int) -> Callable:
    step = partial(ode_solvers.dpm_solver_step, order=order)
    step.__doc__ = f"DPM-Solver-{order}: " + ode_solvers.dpm_solver_step.__doc__
    return step


# The samplers every entry point offers, by name; a new sampler is one entry here.
SAMPLERS = {
    "ddpm": Sampler(ddpm_step, respaced=True),
    "ddim": Sampler(ddim_step, respaced=False),
    "langevin": Sampler(langevin_step, respaced=False),
    "pc": Sampler(predictor_corrector_step, respaced=True),
    "dpmpp_2m": Sampler(ode_solvers.dpm_solver_pp_2m_step, respaced=False, spacing="logsnr"),
    "heun": Sampler(ode_solvers.heun_step, respaced=False, spacing="karras", stages=2),
    "euler_ancestral": Sampler(ode_solvers.euler_ancestral_step, respaced=False, spacing="karras"),
    "sddpm": Sampler(process.sddpm_step, respaced=True),
    **{f"dpm_solver_{k}": Sampler(_dpm_solver(k), respaced=False, spacing="logsnr", stages=k)
       for k in ode_solvers.DPM_SOLVER_ORDERS},
}


def check_steps(name: str, steps, num_steps: int, what: str = "steps"):
    """Refuse a step count a sampler cannot run as asked: not an integer, below 1, or above the
    schedule's T (every sampler visits distinct schedule indices)."""
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{what}={steps!r} for {name!r} must be an integer >= 1")
    if steps > num_steps:
        raise ValueError(f"{what}={steps} for {name!r} exceeds the schedule's T = {num_steps} steps: "
                         f"use at most {num_steps}")


def network_evaluations(name: str, schedule: Schedule, steps: int, **settings) -> int:
    """Network calls (NFE) that ``steps`` steps of sampler ``name`` cost on ``schedule``: 1 + the
    Langevin corrections ``n_steps`` a step for the samplers that correct; otherwise ``stages`` a
    step and 1 for the last (to clean data), where a DPM-Solver step spanning fewer indices than its
    order takes the order that fits (``ode_solvers.dpm_solver_step``), so its count comes from the
    planned grid."""
    sampler = SAMPLERS[name]
    if takes(name, "n_steps"):
        corrections = settings.get("n_steps", inspect.signature(sampler.step).parameters["n_steps"].default)
        return steps * (1 + corrections)
    if not takes(name, "order"):
        return sampler.stages * (steps - 1) + 1
    timesteps = np.asarray(plan(name, schedule, steps, **settings)[2])
    room = np.minimum(sampler.stages, timesteps[:-1] - timesteps[1:])
    return int(room.sum()) + 1


def steps_within(name: str, schedule: Schedule, evaluations: int, **settings) -> int:
    """The most steps of sampler ``name`` on ``schedule`` that cost at most ``evaluations`` network
    calls (an NFE budget, as fast-sampler papers compare them); a budget below the sampler's
    minimum (one step; two for a multi-stage solver, ``stages`` + 1 calls) is refused."""
    least = 2 if SAMPLERS[name].stages > 1 else 1
    if network_evaluations(name, schedule, least, **settings) > evaluations:
        raise ValueError(f"{evaluations} network evaluations are fewer than {name!r} needs for {least} step(s) "
                         f"({network_evaluations(name, schedule, least, **settings)})")
    steps = least
    while steps < schedule.num_steps and network_evaluations(name, schedule, steps + 1, **settings) <= evaluations:
        steps += 1
    return steps


def takes(name: str, setting: str) -> bool:
    """Whether sampler ``name``'s step has the keyword ``setting`` (``eta``, ``churn``, …)."""
    return setting in inspect.signature(SAMPLERS[name].step).parameters


def plan(name: str, schedule: Schedule, steps: int, spacing: str = "", **settings
         ) -> tuple[Callable, Schedule, jax.Array]:
    """(step with ``settings`` bound, the schedule it runs on, its descending timesteps) for the
    sampler ``name`` in ``steps`` steps. ``spacing`` (one of ``schedules.SPACING_NAMES``, e.g.
    'trailing') overrides the sampler's own choice of kept steps. Settings the step does not take
    (η for DDPM, say) are dropped, so one set of settings serves every sampler."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    if spacing and spacing not in SPACING_NAMES:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACING_NAMES} (or '' for the sampler's own)")
    check_steps(name, steps, schedule.num_steps)
    sampler = SAMPLERS[name]
    if sampler.stages > 1 and steps < 2:
        raise ValueError(f"{name!r} needs at least 2 steps ({sampler.stages + 1} network evaluations): one "
                         f"{sampler.stages}-stage step and the step to clean data; 1 step is DDIM's single "
                         "step (use 'ddim')")
    step = partial(sampler.step, **{k: v for k, v in settings.items() if takes(name, k)})
    if sampler.respaced:
        if steps < schedule.num_steps or spacing:
            schedule = respace(schedule, space_timesteps(schedule.num_steps, f"{spacing}{steps}"))
        return step, schedule, jnp.arange(schedule.num_steps - 1, -1, -1)
    if spacing:
        return step, schedule, spaced(schedule, f"{spacing}{steps}")
    return step, schedule, SPACINGS[sampler.spacing](schedule, steps)
