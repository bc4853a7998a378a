"""The first-stage autoencoder's losses (Rombach et al. 2022, §3 and App. G), as pure functions.

KL-reg (LDM's ``LPIPSWithDiscriminator``): L = E_B[Σ_pixels ℓ(x, x̃)] + β_KL · E_B[KL(q(z|x) ‖ N(0, I))]
with ℓ the L1 or L2 error, the sum over pixels and the KL summed over the latent, as LDM does, so
β_KL ≈ 1e-6 weighs them as in the paper. (LDM's learned scalar log-variance on ℓ is left out: LDM
never gives it to an optimizer, so it stays 0 there too.)

VQ-reg (taming's ``VQLPIPSWithDiscriminator``): L = mean_pixels ℓ(x, x̃) + w_cb · (‖sg[z_e] − z_q‖²
+ β ‖z_e − sg[z_q]‖²) (van den Oord et al. 2017, eq. 3; β = 0.25), or, with EMA codebook updates,
the commitment term alone and ``ema_codebook_update`` moving the codes.

Adversarial (optional, Esser et al. 2021 eq. 5–7): a PatchGAN's hinge loss, the generator term
−E[D(x̃)] weighted by λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ) at the decoder's last layer G_L,
times ``disc_weight``, and both switched on from step ``disc_start``.

Perceptual loss: LDM adds LPIPS (a VGG-16 with learned linear heads) to ℓ. Its weights cannot be
downloaded here, so no perceptual loss is used; ``autoencoder_loss`` takes any
``perceptual_fn(x, x̃) -> [B]`` and adds ``perceptual_weight`` · it to every pixel's ℓ, as LDM does.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

RECONSTRUCTIONS = ("l1", "l2")
PerceptualFn = Callable[[jax.Array, jax.Array], jax.Array]   # (x, x̃) [B, H, W, C] -> distance [B]


@dataclasses.dataclass(frozen=True)
class FirstStageLoss:
    """The loss's settings, fixed for a run. ``kind``: 'kl' or 'vq'."""
    kind: str = "kl"
    reconstruction: str = "l1"
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    commitment: float = 0.25
    ema_codebook: bool = False
    restart_below: float = 0.0        # EMA codebook: restart codes whose EMA count falls below this
    disc_weight: float = 0.0          # 0: no adversarial term
    disc_start: int = 0
    perceptual_weight: float = 0.0    # needs a perceptual_fn


def pixel_error(x, x_rec, kind: str = "l1"):
    """|x − x̃| or (x − x̃)², elementwise [B, H, W, C]."""
    if kind not in RECONSTRUCTIONS:
        raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {RECONSTRUCTIONS}")
    return jnp.abs(x - x_rec) if kind == "l1" else (x - x_rec) ** 2


def gaussian_kl(mean, logvar):
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²) per example (Kingma & Welling 2014,
    App. B), summed over every axis but the first. mean, logvar: [B, ...] → [B]."""
    kl = 0.5 * (mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
    return kl.reshape(kl.shape[0], -1).sum(1)


def vq_losses(z_e, z_q):
    """(codebook, commitment) = (mean ‖sg[z_e] − z_q‖², mean ‖z_e − sg[z_q]‖²) (van den Oord et al.
    2017, eq. 3): the first moves the codes toward the encoder outputs assigned to them, the second
    keeps the encoder near its codes. z_e, z_q: [B, h, w, c]."""
    sg = jax.lax.stop_gradient
    return jnp.mean((sg(z_e) - z_q) ** 2), jnp.mean((z_e - sg(z_q)) ** 2)


def codebook_usage(indices, codebook_size: int):
    """(perplexity, dead codes) of a batch's assignments int[...]: exp(−Σ_k p_k log p_k) with p_k the
    share of vectors assigned to code k (K when all codes are used equally, 1 when one code takes
    all), and the number of codes no vector was assigned to."""
    counts = jnp.bincount(indices.reshape(-1), length=codebook_size)
    p = counts / jnp.maximum(counts.sum(), 1)
    perplexity = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))
    return perplexity, jnp.sum(counts == 0)


def ema_codebook_update(stats: dict, z_e, indices, decay: float, eps: float = 1e-5, *,
                        restart_below: float = 0.0, key=None) -> dict:
    """Codebook EMA step (van den Oord et al. 2017, App. A.1): N_k ← γN_k + (1 − γ)n_k,
    m_k ← γm_k + (1 − γ)Σ_{i: k_i = k} z_e,i, e_k = m_k / Ñ_k with Laplace-smoothed
    Ñ_k = (N_k + ε) / (ΣN + Kε) · ΣN. ``stats``: {"codebook" [K, c], "cluster_size" [K], "embed_sum" [K, c]};
    z_e [..., c] and its nearest-code ``indices`` [...].

    ``restart_below`` > 0 (with ``key``): a code whose N_k falls below it is dead and restarts at an
    encoder output of the batch drawn at random, with N_k = 1 (Jukebox's restarts, Dhariwal et al.
    2020). With N_k starting at 1, every code unused in the first batch restarts there, which
    initialises the codebook from the data."""
    K, c = stats["codebook"].shape
    flat = jax.lax.stop_gradient(z_e).reshape(-1, c)
    onehot = jax.nn.one_hot(indices.reshape(-1), K, dtype=flat.dtype)
    cluster_size = decay * stats["cluster_size"] + (1 - decay) * onehot.sum(0)
    embed_sum = decay * stats["embed_sum"] + (1 - decay) * onehot.T @ flat
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + K * eps) * total
    codebook = embed_sum / smoothed[:, None]
    if restart_below > 0:
        dead = cluster_size < restart_below
        fresh = flat[jax.random.randint(key, (K,), 0, flat.shape[0])]
        codebook = jnp.where(dead[:, None], fresh, codebook)
        embed_sum = jnp.where(dead[:, None], fresh, embed_sum)
        cluster_size = jnp.where(dead, 1.0, cluster_size)
    return {"codebook": codebook, "cluster_size": cluster_size, "embed_sum": embed_sum}


def hinge_d_loss(logits_real, logits_fake):
    """The discriminator's hinge loss ½ (E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̃))])."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake):
    """The generator's adversarial term −E[D(x̃)]."""
    return -jnp.mean(logits_fake)


def adaptive_weight(rec_grad, gan_grad, delta: float = 1e-4, max_weight: float = 1e4):
    """λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ), clipped to [0, 1e4] and held constant
    (no gradient), from the two losses' gradients at the decoder's last layer (Esser et al. 2021, eq. 7)."""
    weight = jnp.linalg.norm(rec_grad) / (jnp.linalg.norm(gan_grad) + delta)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def adversarial_factor(step, start: int):
    """1 from step ``start`` on, 0 before it (LDM's ``adopt_weight``)."""
    return jnp.where(step >= start, 1.0, 0.0)


def reconstruction_term(x, x_rec, settings: FirstStageLoss, perceptual_fn: Optional[PerceptualFn] = None):
    """The reconstruction term: summed over pixels (KL-reg) or their mean (VQ-reg), averaged over the
    batch; with a ``perceptual_fn``, ``perceptual_weight`` · its distance is added to each pixel's error."""
    err = pixel_error(x, x_rec, settings.reconstruction)
    if settings.perceptual_weight:
        if perceptual_fn is None:
            raise ValueError("perceptual_weight > 0 needs a perceptual_fn: none ships with this library "
                             "(LPIPS needs downloaded VGG weights)")
        err = err + settings.perceptual_weight * perceptual_fn(x, x_rec)[:, None, None, None]
    per_image = err.reshape(err.shape[0], -1)
    return jnp.mean(per_image.sum(1) if settings.kind == "kl" else per_image.mean(1))


def autoencoder_loss(x, x_rec, aux: dict, settings: FirstStageLoss, perceptual_fn: Optional[PerceptualFn] = None):
    """(L, terms): the reconstruction term plus the regulariser of ``settings.kind`` (the module
    docstring's formulas), without the adversarial term. ``aux``: the autoencoder's ("mean", "logvar")
    or ("z_e", "z_q")."""
    rec = reconstruction_term(x, x_rec, settings, perceptual_fn)
    terms = {"reconstruction": rec, "pixel_l1": jnp.mean(jnp.abs(x - x_rec))}
    if settings.kind == "kl":
        kl = jnp.mean(gaussian_kl(aux["mean"], aux["logvar"]))
        terms["kl"] = kl
        return rec + settings.kl_weight * kl, terms
    codebook, commitment = vq_losses(aux["z_e"], aux["z_q"])
    terms.update(codebook=codebook, commitment=commitment)
    vq = settings.commitment * commitment + (0.0 if settings.ema_codebook else codebook)
    return rec + settings.codebook_weight * vq, terms
