"""CLIP's contrastive objective and what it is measured by (Radford et al. 2021): the symmetric
InfoNCE loss with a learned, clipped temperature, its training step (on x_t for the noise-aware
model GLIDE guides with, Nichol et al. 2022 §2.4, §3.4), zero-shot accuracy and retrieval recall@k.

Nothing here reads a config: hyperparameters are bound with ``functools.partial``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from diffusion import gaussian, training
from diffusion.schedules import Schedule

INIT_LOG_SCALE = math.log(1 / 0.07)   # CLIP's initial temperature τ = 0.07
MAX_LOG_SCALE = math.log(100.0)      # "clipped to prevent scaling the logits by more than 100"


def logit_scale(log_scale) -> jax.Array:
    """1/τ = exp(clip(log_scale, 0, log 100)): CLIP's log-parameterised temperature, clipped (no
    gradient flows past the bounds, as when the parameter itself is clamped after each step)."""
    return jnp.exp(jnp.clip(log_scale, 0.0, MAX_LOG_SCALE))


def normalize(embeddings) -> jax.Array:
    """Rows scaled to unit L2 norm [N, D]."""
    return embeddings / jnp.maximum(jnp.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)


def info_nce(image_emb, text_emb, log_scale, positives=None) -> tuple[jax.Array, jax.Array]:
    """(loss, logits [N, N]): logits_ij = cos(I_i, T_j)/τ and the mean of the image→text and
    text→image cross-entropies (CLIP, Figure 3). ``image_emb``, ``text_emb`` [N, D], row i of each a
    matching pair. The targets are the pairs (i, i), or, given ``positives`` bool [N, N] (identical
    captions: every pair with the same text matches), each row's positives with equal weight — with
    templated captions many rows of a batch share one, and CLIP's one-hot targets would push apart
    images whose texts cannot be told apart."""
    logits = logit_scale(log_scale) * normalize(image_emb) @ normalize(text_emb).T
    positives = jnp.eye(logits.shape[0], dtype=bool) if positives is None else positives
    weights = positives / positives.sum(axis=1, keepdims=True)
    weights_t = positives.T / positives.T.sum(axis=1, keepdims=True)
    loss_i = optax.softmax_cross_entropy(logits, weights).mean()
    loss_t = optax.softmax_cross_entropy(logits.T, weights_t).mean()
    return (loss_i + loss_t) / 2, logits


def same_caption(tokens) -> jax.Array:
    """bool [N, N]: rows i and j carry identical token sequences (``tokens`` int [N, L])."""
    return jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)


def recall_at_k(similarity, k: int, groups=None) -> jax.Array:
    """The share of queries (rows of ``similarity`` [N_query, N_item]) whose top ``k`` items hold a
    match: item i for query i, or, with ``groups`` int [N] (the pairs' caption ids, as N_query =
    N_item), any item of the query's group, since identical captions are interchangeable."""
    n_query, n_item = similarity.shape
    if not 1 <= k <= n_item:
        raise ValueError(f"recall@{k} needs 1 <= k <= {n_item} items")
    groups = jnp.arange(n_item) if groups is None else jnp.asarray(groups)
    if groups.shape != (n_item,) or n_query != n_item:
        raise ValueError(f"retrieval pairs query i with item i: got {n_query} queries, {n_item} items and "
                         f"groups of shape {groups.shape}")
    top = jax.lax.top_k(similarity, k)[1]
    return jnp.mean(jnp.any(groups[top] == groups[:, None], axis=1))


def zero_shot_accuracy(similarity, labels) -> jax.Array:
    """The share of images whose most similar class prompt is their class: ``similarity``
    [N, C] (image i against the prompt of class c), ``labels`` int [N] (CLIP, §3.1.2)."""
    return jnp.mean(jnp.argmax(similarity, axis=1) == jnp.asarray(labels))


def clip_score(image_emb, text_emb) -> jax.Array:
    """100 · cos(I_i, T_i) per row [N]: the CLIP score of each image against its own prompt, as
    GLIDE (Nichol et al. 2022, §4.1) and unCLIP (Ramesh et al. 2022, Table 1) report it (CLIPScore,
    Hessel et al. 2021, additionally clips at 0 and rescales by 2.5; the papers' plain ×100 is kept)."""
    return 100.0 * jnp.sum(normalize(image_emb) * normalize(text_emb), axis=-1)


def contrastive_step(state: training.TrainState, batch: dict, *, apply_fn: Callable,
                     tx: optax.GradientTransformation, ema_decay: float = 0.999, ema_warmup: bool = True,
                     schedule: Optional[Schedule] = None):
    """One InfoNCE step on ``batch`` ({'image' [B, H, W, C] in [−1, 1], 'label': int [B, K, L]: K
    captions of each image as token ids, one drawn per row from ``fold_in(rng, step)``}); given
    ``schedule``, the images are x_t = q_sample(x_0, t, ε) at uniform t and the image tower reads t
    (GLIDE's noised CLIP). ``apply_fn(variables, images, tokens[, t]) -> (I, T, log_scale)``."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    k_caption, k_t, k_noise = jax.random.split(key, 3)
    x, candidates = batch["image"], batch["label"]
    rows = jnp.arange(x.shape[0])
    tokens = candidates[rows, jax.random.randint(k_caption, rows.shape, 0, candidates.shape[1])]
    args = ()
    if schedule is not None:
        t = jax.random.randint(k_t, rows.shape, 0, schedule.num_steps)
        x = gaussian.q_sample(schedule, x, t, jax.random.normal(k_noise, x.shape, x.dtype))
        args = (t,)

    positives = same_caption(tokens)

    def loss_fn(params):
        image_emb, text_emb, log_scale = apply_fn({"params": params}, x, tokens, *args)
        loss, logits = info_nce(image_emb, text_emb, log_scale, positives)
        return loss, (logits, log_scale)

    (loss, (logits, log_scale)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, grad_norm, finite = training.apply_gradients(state, loss, grads, tx=tx, ema_decay=ema_decay,
                                                            ema_warmup=ema_warmup)
    accuracy = jnp.mean(positives[rows, jnp.argmax(logits, -1)])   # a caption identical to its own counts
    return new_state, {"loss": loss, "accuracy": accuracy, "logit_scale": logit_scale(log_scale),
                       "grad_norm": grad_norm, "update_finite": finite}
