"""Training objectives: L_simple, the variational bound L_VLB, the hybrid loss and seed 004's SDDPM loss.

Per-example terms are means over data dimensions; VLB terms are in bits/dim, SDDPM terms in nats/dim.
References: Ho et al. 2020 (eqs. 5, 12, 14), Nichol & Dhariwal 2021 (§3.1, eq. 16), seed 004.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import jax.scipy.special

from diffusion import gaussian, reverse
from diffusion.schedules import Schedule
from diffusion.sddpm import process

LOSSES = ("simple", "vlb", "hybrid", process.LOSS)
WEIGHTINGS = (None, "min_snr", "p2")
DECODERS = ("discretized", "gaussian")
LN2 = math.log(2.0)


def mean_flat(x):
    """Mean over every axis but the first."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _log_normal_mass(lower, upper):
    """log(Φ(upper) − Φ(lower)) for lower < upper, from log-CDFs so that it stays finite and exact far
    into either tail: on the right of 0 through the survival function Φ(−x), where Φ(x) rounds to 1."""
    right = lower > 0
    a = jnp.where(right, -upper, lower)       # the bin mirrored onto the left tail when it lies right
    b = jnp.where(right, -lower, upper)
    log_b, log_a = jax.scipy.special.log_ndtr(b), jax.scipy.special.log_ndtr(a)
    return log_b + jnp.log1p(-jnp.exp(log_a - log_b))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log P(x) for 8-bit data scaled to [−1, 1] under N(mean, e^{2·log_scale}) binned to width 2/255.

    The end bins extend to ±∞ (Ho et al. 2020, eq. 13). Elementwise, in nats. Every bin's mass is
    taken from log-CDFs (no floor), so the edge and interior bins agree in the tails: a far-off mean
    gives the Gaussian's true, very negative log-probability in both. Uses the exact Φ where Ho et
    al.'s code used a tanh approximation (they differ by < 2e-4 in Φ) and floored interior bins at
    1e-12.
    """
    centered = x - mean
    inv_stdv = jnp.exp(-log_scale)
    upper, lower = inv_stdv * (centered + 1.0 / 255.0), inv_stdv * (centered - 1.0 / 255.0)
    return jnp.where(x < -0.999, jax.scipy.special.log_ndtr(upper),
                     jnp.where(x > 0.999, jax.scipy.special.log_ndtr(-lower), _log_normal_mass(lower, upper)))


def gaussian_log_likelihood(x, mean, log_var):
    """log N(x; mean, e^log_var) elementwise, in nats (decoder for continuous data)."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * jnp.exp(-log_var))


def prior_bpd(schedule: Schedule, x0):
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) in bits/dim, per example [B]."""
    t = jnp.full((x0.shape[0],), schedule.num_steps - 1, dtype=jnp.int32)
    mean, _, log_var = gaussian.q_mean_variance(schedule, x0, t)
    return mean_flat(normal_kl(mean, log_var, 0.0, 0.0)) / LN2


def vlb_term_bpd(schedule: Schedule, p: reverse.ReverseGaussian, x0, x_t, t, decoder="discretized"):
    """L_{t−1} in bits/dim per example [B]: KL(q(x_{t−1}|x_t,x_0) ‖ p_θ) for t > 0, the decoder −log p_θ(x_0|x_1) at t = 0."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    true_mean, _, true_log_var = gaussian.q_posterior(schedule, x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / LN2
    if decoder == "discretized":
        nll = -discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance)
    else:
        nll = -gaussian_log_likelihood(x0, p.mean, p.log_variance)
    return jnp.where(t == 0, mean_flat(nll) / LN2, kl)


def timestep_weight(schedule: Schedule, t, prediction: str, weighting: Optional[str],
                    min_snr_gamma: float = 5.0, p2_gamma: float = 1.0, p2_k: float = 1.0):
    """Per-example weight of the MSE term.

    min_snr: min(SNR, γ) expressed for the target (Hang et al. 2023): ÷SNR for ε, ×1 for x_0, ÷(SNR+1) for v.
    p2: 1/(k + SNR)^γ applied to the ε-MSE (Choi et al. 2022, eq. 8).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    snr = jnp.take(schedule.snr, t)
    if weighting is None:
        return jnp.ones_like(snr)
    if weighting == "min_snr":
        clipped = jnp.minimum(snr, min_snr_gamma)
        return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[prediction]
    return 1.0 / (p2_k + snr) ** p2_gamma


def check_loss_variance(loss: str, variance: str, field_prefix: str = ""):
    """Refuse a loss that cannot train the reverse variance asked for: L_simple has no term for a
    learned Σ_θ, the hybrid loss is L_simple plus the L_VLB that trains one (Nichol & Dhariwal
    2021, §3.1), and the SDDPM's q_r has no learned range (``sddpm.check_variance``).
    ``field_prefix`` names the fields as the caller's settings do ("diffusion.")."""
    loss_field, variance_field = f"{field_prefix}loss", f"{field_prefix}variance"
    if loss not in LOSSES:
        raise ValueError(f"unknown {loss_field} {loss!r}; choose one of {LOSSES}")
    if loss == process.LOSS:
        process.check_variance(variance, field=variance_field, loss_field=loss_field)
        return
    learned = variance.startswith("learned")
    if loss == "simple" and learned:
        raise ValueError(f"{loss_field}='simple' trains no variance but {variance_field} is {variance!r}: "
                         "use loss 'hybrid' or 'vlb', or a fixed variance")
    if loss == "hybrid" and not learned:
        raise ValueError(f"{loss_field}='hybrid' trains the variance through L_VLB, so it needs {variance_field} "
                         f"'learned' or 'learned_range', not {variance!r}; or use loss 'simple'")


def sddpm_losses(model_fn: Callable, schedule: Schedule, x0, t, noise, step_noise, *, prediction=process.RESIDUAL,
                 variance="fixed_large", cond=None):
    """Seed 004's loss per example [B]: −log q_r(x_{t−1} | x_t) in nats/dim on the forward pair
    (x_{t−1}, x_t) = ``sddpm.forward_pair(x0, t, ε, z)``, q_r's mean read from the network by
    ``sddpm.reverse_step`` (the seed's x_t + ε_r for ``prediction="residual"``). For a fixed σ_t it is
    the seed's regression ‖x_t + ε_r − x_{t−1}‖²/2σ_t² plus a constant; uniform t makes it an unbiased
    estimate of Σ_t E[−log q_r]/T. Returns ``loss`` and ``mse`` (‖x_{t−1} − μ_r‖² per dimension)."""
    x_prev, x_t = process.forward_pair(schedule, x0, t, noise, step_noise)
    output = model_fn(x_t, schedule.timesteps[t], **(cond or {}))
    mean, log_var = process.reverse_step(schedule, output, x_t, t, prediction=prediction, variance=variance)
    return {"loss": mean_flat(-gaussian_log_likelihood(x_prev, mean, log_var)),
            "mse": mean_flat((x_prev - mean) ** 2)}


def sddpm_objective(model_fn: Callable, schedule: Schedule, x0, key, *, prediction=process.RESIDUAL,
                    variance="fixed_large", cond=None):
    """Seed 004's objective −L − c = Σ_t E[−log q_r(x_{t−1} | x_t)] (nats/dim) of any Gaussian reverse
    model (``sddpm.reverse_step``: a residual, or Ho et al.'s p_θ) on x0 [B, ...]: one forward pair
    per step t = 0 … T−1 from ``key``, in one ``lax.scan``. Returns ``total`` [B] and ``terms``
    [B, T] (index 0: −log q_r(x_0 | x_1))."""
    keys = jax.random.split(key, schedule.num_steps)

    def per_step(_, inp):
        t_scalar, k = inp
        t = jnp.full((x0.shape[0],), t_scalar, dtype=jnp.int32)
        k_noise, k_step = jax.random.split(k)
        terms = sddpm_losses(model_fn, schedule, x0, t, jax.random.normal(k_noise, x0.shape, x0.dtype),
                             jax.random.normal(k_step, x0.shape, x0.dtype), prediction=prediction,
                             variance=variance, cond=cond)
        return None, terms["loss"]

    _, terms = jax.lax.scan(per_step, None, (jnp.arange(schedule.num_steps), keys))
    return {"total": jnp.sum(terms, axis=0), "terms": terms.T}


def training_losses(model_fn: Callable, schedule: Schedule, x0, t, noise, *, prediction="eps",
                    variance="fixed_small", loss="simple", hybrid_weight=1e-3,
                    weighting=None, min_snr_gamma=5.0, p2_gamma=1.0, p2_k=1.0,
                    decoder="discretized", cond=None, step_noise=None):
    """Per-example losses for x0 [B, ...] at steps t int[B] with noise ε [B, ...].

    ``model_fn(x_t, timesteps, **cond)`` is the network; it is called once. Returns a dict
    of [B] arrays: ``loss`` (what to minimise), ``mse`` and, when used, ``vlb`` (L_{t−1}, bits/dim).
    simple: ‖target − f_θ‖² (eq. 14); vlb: T·L_{t−1}; hybrid: L_simple + λ·T·L_{t−1} with the
    gradient stopped through the mean (Nichol & Dhariwal 2021, §3.1); sddpm: ``sddpm_losses``, which
    also needs ``step_noise`` (the z of the forward step x_{t−1} → x_t) and alone takes the
    prediction "residual".
    """
    check_loss_variance(loss, variance)
    process.check_prediction(loss, prediction)
    if loss == process.LOSS:
        if step_noise is None:
            raise ValueError("loss 'sddpm' trains on a forward pair (x_{t−1}, x_t): pass step_noise, the z of "
                             "the step between them")
        return sddpm_losses(model_fn, schedule, x0, t, noise, step_noise, prediction=prediction, variance=variance,
                            cond=cond)
    x_t = gaussian.q_sample(schedule, x0, t, noise)
    output = model_fn(x_t, schedule.timesteps[t], **(cond or {}))
    pred, var_out = reverse.split_output(output, variance)
    mse = mean_flat((gaussian.target(schedule, x0, t, noise, prediction) - pred) ** 2)
    terms = {"mse": mse}
    if loss == "simple":
        terms["loss"] = mse * timestep_weight(schedule, t, prediction, weighting,
                                              min_snr_gamma, p2_gamma, p2_k)
        return terms
    if loss == "hybrid":
        output = jnp.concatenate([jax.lax.stop_gradient(pred), var_out], axis=-1)
    p = reverse.reverse_gaussian(schedule, output, x_t, t, prediction=prediction, variance=variance)
    vlb = vlb_term_bpd(schedule, p, x0, x_t, t, decoder)
    terms["vlb"] = vlb
    T = schedule.num_steps
    if loss == "vlb":
        terms["loss"] = T * vlb
    else:
        weight = timestep_weight(schedule, t, prediction, weighting, min_snr_gamma, p2_gamma, p2_k)
        terms["loss"] = weight * mse + hybrid_weight * T * vlb
    return terms
