"""Which steps t a training batch sees: uniform, stratified, or importance sampling of L_VLB.

Stratified sampling is the low-discrepancy sampler of t of Kingma et al. 2021 (VDM):
one uniform offset shared by the batch, row i at (u + i/B) mod 1, so every row is still
uniform on {0..T−1} (the loss stays unbiased) while the batch covers [0, 1) evenly.
Importance sampling follows Nichol & Dhariwal 2021, eq. 18: p_t ∝ √E[L_t²] from a
history of the last 10 losses per step, uniform until every step has 10.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


def uniform(key, batch_size: int, num_steps: int):
    """t ~ U{0..T−1} i.i.d. and unit importance weights."""
    t = jax.random.randint(key, (batch_size,), 0, num_steps)
    return t, jnp.ones((batch_size,), jnp.float32)


def stratified(key, batch_size: int, num_steps: int):
    """VDM's low-discrepancy draw: t_i = ⌊T·((u + i/B) mod 1)⌋ with one u ~ U[0, 1) for the batch,
    and unit weights. Each t_i is marginally U{0..T−1}, and the batch holds exactly one row in each
    interval [jT/B, (j+1)T/B) of the chain, which lowers the variance of the batch's loss (and
    gradient) over the draw of t. Rows i follow the strata in order: a slice of the batch (one
    device's, one micro-batch's) covers a contiguous range of t, the whole batch all of [0, T)."""
    u = jax.random.uniform(key, ())
    v = jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
    t = jnp.minimum(jnp.floor(v * num_steps).astype(jnp.int32), num_steps - 1)   # float rounding at v → 1
    return t, jnp.ones((batch_size,), jnp.float32)


# The draws that need no state, by diffusion.timestep_sampler; "importance" reads the loss history.
DRAWS = {"uniform": uniform, "stratified": stratified}
SAMPLERS = tuple(DRAWS) + ("importance",)


@flax.struct.dataclass
class LossHistory:
    """The last ``history`` squared-loss entries per step; float[T, K] and int32[T]."""
    losses: jax.Array
    counts: jax.Array


def init_loss_history(num_steps: int, history: int = 10) -> LossHistory:
    return LossHistory(jnp.zeros((num_steps, history), jnp.float32),
                       jnp.zeros((num_steps,), jnp.int32))


def importance_probs(state: LossHistory, uniform_prob: float = 1e-3):
    """p_t ∝ √mean(L_t²), mixed with uniform_prob of the uniform; uniform until the history is full."""
    T, K = state.losses.shape
    w = jnp.sqrt(jnp.mean(state.losses ** 2, axis=-1))
    p = w / jnp.maximum(jnp.sum(w), 1e-30) * (1.0 - uniform_prob) + uniform_prob / T
    return jnp.where(jnp.all(state.counts >= K), p, jnp.full((T,), 1.0 / T))


def importance_sample(state: LossHistory, key, batch_size: int, uniform_prob: float = 1e-3):
    """t ~ p_t and weights 1/(T·p_t), so E[weight·L_t] is the uniform average."""
    p = importance_probs(state, uniform_prob)
    t = jax.random.choice(key, p.shape[0], (batch_size,), p=p)
    return t, (1.0 / (p.shape[0] * p[t])).astype(jnp.float32)


def update_loss_history(state: LossHistory, t, losses) -> LossHistory:
    """Append each (t, loss) in batch order; once a step has K entries the oldest is dropped."""
    K = state.losses.shape[1]

    def add(hist, item):
        losses, counts = hist
        step, value = item
        row, n = losses[step], counts[step]
        full = jnp.concatenate([row[1:], value[None]])
        row = jnp.where(n >= K, full, row.at[jnp.minimum(n, K - 1)].set(value))
        return (losses.at[step].set(row), counts.at[step].set(jnp.minimum(n + 1, K))), None

    (losses_, counts_), _ = jax.lax.scan(add, (state.losses, state.counts),
                                         (t, losses.astype(jnp.float32)))
    return LossHistory(losses_, counts_)
