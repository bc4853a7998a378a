"""Discrete variance-preserving noise schedules and their respacing.

Indexing follows improved-diffusion: step ``t`` in ``0..T-1`` is the paper's
step ``t + 1``; ``alphas_cumprod[t]`` is ᾱ of the paper's x_{t+1}; index 0 is
the decoder step that produces x_0.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Schedule:
    """Everything a step needs, each field float[T] (``timesteps`` int32[T]).

    ``timesteps[i]`` is the step of the original (training) schedule that index
    ``i`` stands for; it is ``arange(T)`` unless the schedule was respaced, and
    it is what the network is conditioned on.
    """
    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    snr: jax.Array
    timesteps: jax.Array

    @property
    def num_steps(self) -> int:
        return self.betas.shape[-1]


def from_betas(betas, timesteps=None, dtype=None) -> Schedule:
    """Build a schedule from β[T] (Ho et al. 2020, eqs. 4, 6, 7).

    Derived quantities are computed in float64 with NumPy and cast to ``dtype``
    (default: JAX's default float, float64 when x64 is on).
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas <= 1)):
        raise ValueError("every beta must lie in (0, 1]; got min "
                         f"{betas.min():.3g}, max {betas.max():.3g}")
    T = betas.size
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)  # may reach 0 (jsd's last β is 1); the ε ↔ x_0 ratios are then inf
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    # β̃_0 = 0; Ho et al.'s code clips the log with β̃_1 so the decoder step has a finite variance.
    post_log_var = np.log(np.append(post_var[1], post_var[1:])) if T > 1 else np.log(betas)
    with np.errstate(divide="ignore"):
        recip, recipm1 = np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1.0)
    fields = dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=recip,
        sqrt_recipm1_alphas_cumprod=recipm1,
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        snr=ac / (1.0 - ac),
    )
    dtype = dtype or jnp.result_type(float)
    out = {k: jnp.asarray(v, dtype=dtype) for k, v in fields.items()}
    ts = np.arange(T) if timesteps is None else np.asarray(timesteps)
    return Schedule(**out, timesteps=jnp.asarray(ts, dtype=jnp.int32))


# ---- named β schedules (NumPy float64, length T) ----

def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Ho et al. 2020: linear from 1e-4 to 0.02 at T=1000, rescaled by 1000/T."""
    scale = 1000.0 / T
    return np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64)


def quadratic_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Linear in √β (DDPM's 'quad', used by latent diffusion), rescaled by 1000/T."""
    scale = 1000.0 / T
    return np.linspace(math.sqrt(scale * beta_start), math.sqrt(scale * beta_end), T) ** 2


def ldm_betas(T: int) -> np.ndarray:
    """Latent diffusion's schedule (Rombach et al. 2022; CompVis/latent-diffusion's ``linear``, with
    ``linear_start=0.0015, linear_end=0.0195``): linear in √β from 0.0015 to 0.0195, rescaled by 1000/T."""
    return quadratic_betas(T, beta_start=0.0015, beta_end=0.0195)


def sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Sigmoid over [-6, 6] between β_start and β_end (Ho et al.'s code), rescaled by 1000/T."""
    scale = 1000.0 / T
    s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T)))
    return scale * beta_start + s * scale * (beta_end - beta_start)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2), β clipped at 0.999."""
    f = lambda u: np.cos((u / T + s) / (1 + s) * np.pi / 2) ** 2
    t = np.arange(T, dtype=np.float64)
    return np.minimum(1.0 - f(t + 1) / f(t), max_beta)


def jsd_betas(T: int) -> np.ndarray:
    """β_t = 1/(T − t + 1) for t = 1..T (Sohl-Dickstein et al. 2015)."""
    return 1.0 / np.linspace(T, 1, T, dtype=np.float64)


def constant_betas(T: int = 50, beta: float = 0.2) -> np.ndarray:
    """Constant β, the simplified DDPM of seed 004 (β = 0.2, T = 50)."""
    return np.full(T, beta, dtype=np.float64)


BETA_SCHEDULES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "ldm": ldm_betas,
    "sigmoid": sigmoid_betas,
    "jsd": jsd_betas,
    "constant": constant_betas,
}


def zero_terminal_snr(betas) -> np.ndarray:
    """β rescaled so that ᾱ_{T−1} = 0 exactly, the last step pure noise (Lin et al. 2024, Algorithm 1):
    √ᾱ is shifted to end at 0 and scaled to keep √ᾱ_0. ε-prediction is undefined at SNR 0; train
    with v- (or x_0-) prediction."""
    sqrt_ab = np.sqrt(np.cumprod(1.0 - np.asarray(betas, np.float64)))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    ab = ((sqrt_ab - last) * first / (first - last)) ** 2
    return 1.0 - np.append(ab[0], ab[1:] / ab[:-1])


def make_schedule(name_or_betas, T: int | None = None, dtype=None, *, zero_terminal: bool = False,
                  **kwargs) -> Schedule:
    """A schedule from a β-schedule name and T (``make_schedule("cosine", 1000)``) or a β array;
    ``zero_terminal`` rescales it to zero terminal SNR (``zero_terminal_snr``)."""
    if isinstance(name_or_betas, str):
        if name_or_betas not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta schedule {name_or_betas!r}; "
                             f"choose one of {sorted(BETA_SCHEDULES)} or pass an array of betas")
        if T is None or T < 1:
            raise ValueError(f"schedule {name_or_betas!r} needs a number of steps T >= 1, got {T}")
        betas = BETA_SCHEDULES[name_or_betas](T, **kwargs)
    else:
        betas = name_or_betas
    return from_betas(zero_terminal_snr(betas) if zero_terminal else betas, dtype=dtype)


# ---- respacing (DDIM §4.2, improved DDPM §4) ----

SPACING_NAMES = ("leading", "trailing", "linspace", "quad")


def space_timesteps(T: int, spec: int | str) -> np.ndarray:
    """Sorted indices of the steps to keep.

    ``spec``:
      - int S, ``"uniformS"`` or ``"leadingS"``: DDIM's linear τ_i = ⌊i·T/S⌋, from 0 (diffusers' 'leading');
      - ``"trailingS"``: ⌊T − i·T/S⌉ − 1, so the first step is T − 1 (Lin et al. 2024, Table 2);
      - ``"linspaceS"``: round(linspace(0, T − 1, S)), both ends kept;
      - ``"quadS"``: DDIM's quadratic τ_i = ⌊c·i²⌋ up to 0.8·T, repeats pushed up one step;
      - ``"sections:10,10,10"`` or plain ``"10,10,10"``: improved-diffusion's sections (split [0, T) in
        equal parts, stride evenly inside each, keeping both ends); a single section needs the
        prefix, ``"sections:25"``, since a bare count means DDIM's uniform spacing.
    """
    spec = str(spec).strip()
    try:
        for prefix, spacing in _SPACINGS.items():
            rest = spec.removeprefix(prefix)
            if rest.isdigit() and (prefix or rest == spec):
                _check_count(T, int(rest))
                return np.asarray(spacing(T, int(rest)), dtype=np.int64)
        steps = _section_steps(T, [int(x) for x in spec.removeprefix("sections:").split(",")])
    except ValueError as e:
        if "invalid literal" in str(e):
            raise ValueError(f"cannot parse timestep spacing {spec!r}: use an int, 'leadingS', 'trailingS', "
                             "'linspaceS', 'quadS' or section counts like '10,10,10' / 'sections:25'") from None
        raise
    return np.asarray(steps, dtype=np.int64)


def _quadratic_steps(T: int, S: int) -> np.ndarray:
    steps = np.floor(np.linspace(0, np.sqrt(T * 0.8), S) ** 2).astype(int)
    # DDIM's code repeats the first steps when S is large; keep them strictly increasing.
    return np.maximum.accumulate(steps - np.arange(S)) + np.arange(S)


def _leading_steps(T: int, S: int) -> np.ndarray:
    return (np.arange(S) * T) // S


def _trailing_steps(T: int, S: int) -> np.ndarray:
    return np.sort(np.round(np.arange(T, 0, -T / S)).astype(int) - 1)


# Named spacings of S steps out of T, by their spec prefix ("" for a bare count).
_SPACINGS = {
    "": _leading_steps,
    "uniform": _leading_steps,
    "leading": _leading_steps,
    "trailing": _trailing_steps,
    "linspace": lambda T, S: np.round(np.linspace(0, T - 1, S)).astype(int),
    "quad": _quadratic_steps,
}


def _check_count(T: int, S: int):
    if not 1 <= S <= T:
        raise ValueError(f"cannot keep {S} steps out of {T}: need 1 <= S <= T")


def _section_steps(T: int, counts: Sequence[int]) -> np.ndarray:
    size, extra = divmod(T, len(counts))
    start, steps = 0, []
    for i, n in enumerate(counts):
        length = size + (1 if i < extra else 0)
        if not 1 <= n <= length:
            raise ValueError(f"section {i} has {length} steps, cannot keep {n} of them")
        stride = (length - 1) / (n - 1) if n > 1 else 1
        steps += [start + round(stride * j) for j in range(n)]
        start += length
    return np.asarray(steps)


def respace(schedule: Schedule, kept) -> Schedule:
    """The schedule restricted to steps ``kept`` (sorted indices), β recomputed from ᾱ.

    β'_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}} (Nichol & Dhariwal 2021, §4), so ᾱ' equals ᾱ at the
    kept steps and every posterior quantity is that of the shorter chain.
    """
    kept = np.asarray(kept, dtype=np.int64)
    if kept.ndim != 1 or kept.size == 0 or np.any(np.diff(kept) <= 0) \
            or kept[0] < 0 or kept[-1] >= schedule.num_steps:
        raise ValueError(f"kept steps must be strictly increasing indices in [0, {schedule.num_steps})")
    ac = np.asarray(schedule.alphas_cumprod, dtype=np.float64)[kept]
    betas = 1.0 - ac / np.append(1.0, ac[:-1])
    return from_betas(betas, timesteps=np.asarray(schedule.timesteps)[kept],
                      dtype=schedule.betas.dtype)


def logsnr(schedule: Schedule) -> jax.Array:
    """λ_t = ½·log SNR_t = log(√ᾱ_t/√(1 − ᾱ_t)) at every index (decreasing in t)."""
    return 0.5 * jnp.log(schedule.snr)


def logsnr_at_timesteps(schedule: Schedule, timesteps) -> jax.Array:
    """λ at network timesteps, integer or not: the schedule's λ at its own timesteps, linear in
    between. This is the continuous-time process a discrete schedule stands for when a model is
    evaluated between its steps (the probability-flow ODE); at the steps it is the schedule's λ."""
    lam = logsnr(schedule)
    return jnp.interp(jnp.asarray(timesteps, lam.dtype), schedule.timesteps.astype(lam.dtype), lam)


def timesteps_at_logsnr(schedule: Schedule, lam) -> jax.Array:
    """The (fractional) network timestep whose λ is ``lam``: the inverse of ``logsnr_at_timesteps``
    on [λ_{T−1}, λ_0]."""
    lam_all = logsnr(schedule)
    return jnp.interp(lam, lam_all[::-1], schedule.timesteps[::-1].astype(lam_all.dtype))


def alphas_cumprod_with_clean(schedule: Schedule, t):
    """ᾱ at schedule index t, with ᾱ_{−1} = 1 (clean data), for steps that end at the data."""
    return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], 1.0)
