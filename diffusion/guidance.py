"""Guidance: functions that wrap one model function into another.

A model function is ``model_fn(x_t, timesteps, **cond) -> output`` with ``timesteps`` the
network's own steps; the guided function has the same form, its scale passed in ``cond``
so that a compiled sampler does not recompile when the scale changes.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffusion import gaussian, reverse
from diffusion.schedules import Schedule
from diffusion.text import contrastive


def classifier_free(model_fn: Callable, null_label: Optional[int] = None, variance: str = "fixed_small", *,
                    null_caption=None, null_embedding=None) -> Callable:
    """ε̃ = (1 + w)·ε(x, c) − w·ε(x, ∅)  (Ho & Salimans 2021, eq. 6; GLIDE §2.3 with s = 1 + w).

    Both passes run as one network call on a doubled batch. The combination is applied to the
    prediction channels (valid for ε, x_0 and v alike, which are affine in one another at fixed
    x_t); a learned variance is taken from the conditional pass. The condition c and its null ∅
    are either class labels ``labels`` int[B] and ``null_label`` (for a U-Net whose cross-attention
    reads class tokens τθ(y), the null label's tokens are the null context), or a caption
    ``tokens`` int[B, L] and ``null_caption`` int[L] (``tokenizer.null_caption``: the empty
    prompt, GLIDE's ∅), or unCLIP's image embedding ``cond_vector`` [B, E] and ``null_embedding``
    (``unclip.null_embedding``'s 0; Ramesh et al. 2022, §2.1); give one, or the last two together
    (a decoder that reads a caption too: its unconditional pass has both nulls). The returned
    function takes those conditions and ``guidance_scale`` (w, scalar or [B]). Any other conditioning [B, ...] (an image concatenated
    to x_t) is given to both passes.
    """
    nulls = {"labels": null_label, "tokens": null_caption, "cond_vector": null_embedding}
    nulls = {name: null for name, null in nulls.items() if null is not None}
    if not nulls or ("labels" in nulls and len(nulls) > 1):
        raise ValueError("classifier-free guidance needs one null condition: null_label (class labels), "
                         "null_caption (token ids) or null_embedding (an unCLIP decoder's image embedding, alone or "
                         f"with null_caption); got {sorted(nulls) or 'none'}")

    def guided(x_t, timesteps, *, guidance_scale, **cond):
        missing = [name for name in nulls if name not in cond]
        if missing:
            raise TypeError(f"this guided model function conditions on {missing}: pass " + ", ".join(
                f"{name}=…" for name in missing))
        batch = x_t.shape[0]
        both = {k: jnp.concatenate([v, v]) for k, v in cond.items() if k not in nulls}
        for name, null in nulls.items():
            c = cond[name]
            both[name] = jnp.concatenate([c, jnp.broadcast_to(jnp.asarray(null, c.dtype), c.shape)])
        out = model_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([timesteps, timesteps]), **both)
        pred, var = reverse.split_output(out, variance)
        w = jnp.reshape(guidance_scale, (-1,) + (1,) * (x_t.ndim - 1)).astype(pred.dtype)
        guided_pred = (1 + w) * pred[:batch] - w * pred[batch:]
        return guided_pred if var is None else jnp.concatenate([guided_pred, var[:batch]], axis=-1)
    return guided


def classifier(model_fn: Callable, log_prob_fn: Callable, schedule: Schedule, *,
               prediction: str = "eps", variance: str = "fixed_small", conditional: bool = False,
               condition: str = "labels") -> Callable:
    """ε̃ = ε − √(1−ᾱ_t)·w·∇_x log p_φ(y | x_t, t)  (Dhariwal & Nichol 2021, Algorithm 2).

    ``log_prob_fn(x_t, timesteps, y) -> [B]`` is the noisy classifier's log p(y | x_t), or any
    differentiable score of x_t towards y (``clip``: a noised CLIP's similarity); ``schedule`` is the
    one the network was trained with (indexed by network timesteps). The returned function takes y
    under the name ``condition`` (class ``labels`` int[B] by default) and ``guidance_scale`` (w,
    scalar or [B]) as well as the model's ``cond``; a ``conditional`` model is given y too (ADM
    guides its conditional models as well).
    """
    def guided(x_t, timesteps, *, guidance_scale, **cond):
        if condition not in cond:
            raise TypeError(f"this guided model function steers towards {condition!r}: pass {condition}=…")
        y = cond.pop(condition)
        out = model_fn(x_t, timesteps, **(dict(cond, **{condition: y}) if conditional else cond))
        pred, var = reverse.split_output(out, variance)
        grad = jax.grad(lambda x: jnp.sum(log_prob_fn(x, timesteps, y)))(x_t)
        w = jnp.reshape(guidance_scale, (-1,) + (1,) * (x_t.ndim - 1)).astype(pred.dtype)
        _, eps = gaussian.to_x0_eps(schedule, x_t, timesteps, pred, prediction)
        eps = eps - gaussian.extract(schedule.sqrt_one_minus_alphas_cumprod, timesteps, x_t) * w * grad
        guided_pred = gaussian.from_eps(schedule, x_t, timesteps, eps, prediction)
        return guided_pred if var is None else jnp.concatenate([guided_pred, var], axis=-1)
    return guided


def clip_similarity(encode_image: Callable, logit_scale) -> Callable:
    """``similarity(x_t, timesteps, text_embedding) -> [B]``: (1/τ)·cos(f(x_t, t), g(c)), a noised
    CLIP's logit between x_t and a caption (GLIDE, Nichol et al. 2022, §2.4: f(x_t, t)·g(c) on
    unit-norm embeddings, scaled by the CLIP's learned 1/τ as GLIDE's released ``cond_fn`` does).

    ``encode_image(x_t, timesteps) -> [B, E]`` is the noise-aware image tower f; ``text_embedding``
    [B, E] the caption's g(c), normalised here. Unit norm because InfoNCE trains only the cosine
    (an embedding's length is left free, so ∇ of a raw dot product would partly push it); 1/τ so
    that the similarity is the CLIP's own logit, log p(c | x_t) up to the caption-independent
    partition term GLIDE drops, and w reads on the scale of classifier guidance's log p(y | x_t).
    """
    def similarity(x_t, timesteps, text_embedding):
        image = contrastive.normalize(encode_image(x_t, timesteps))
        return logit_scale * jnp.sum(image * contrastive.normalize(text_embedding), axis=-1)
    return similarity


def clip(model_fn: Callable, encode_image: Callable, logit_scale, schedule: Schedule, *,
         prediction: str = "eps", variance: str = "fixed_small") -> Callable:
    """CLIP guidance (GLIDE §2.4): ``classifier`` guidance with log p(y | x_t) replaced by
    ``clip_similarity``, ε̃ = ε − √(1−ᾱ_t)·w·∇_x (1/τ)·cos(f(x_t, t), g(c)). The returned function
    takes ``text_embedding`` g(c) [B, E] (computed once per prompt, outside the sampler) and
    ``guidance_scale``; anything else in ``cond`` (a text-conditioned model's ``tokens``) goes to
    the model, which need not read text at all (GLIDE guides an unconditional model too).
    """
    return classifier(model_fn, clip_similarity(encode_image, logit_scale), schedule, prediction=prediction,
                      variance=variance, condition="text_embedding")
