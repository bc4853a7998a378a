"""The training state and one pure training step (Ho et al. 2020, Algorithm 1), plus its optimizer and EMA.

Nothing here reads a config: hyperparameters are bound with ``functools.partial``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from diffusion import gaussian, losses, timestep_sampling
from diffusion.schedules import Schedule
from diffusion.text.tokenizer import null_caption


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue bit for bit: ``rng`` holds raw key data (uint32[2])."""
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    loss_history: timestep_sampling.LossHistory
    rng: jax.Array


def make_optimizer(*, lr: float, warmup_steps: int = 0, decay: str = "constant", total_steps: int = 1,
                   cooldown_steps: int = 0, optimizer: str = "adam", b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0, grad_clip: float = 0.0,
                   accum_steps: int = 1) -> optax.GradientTransformation:
    """Global-norm clipping → Adam/AdamW with linear warm-up and a constant, cosine or cool-down schedule;
    ``accum_steps`` > 1 wraps it in ``optax.MultiSteps``: the mean gradient of that many calls is
    clipped and applied on the last of them (zero updates before), and the schedules count applied
    updates, so ``warmup_steps`` and ``total_steps`` are optimizer steps."""
    schedule = learning_rate_schedule(lr=lr, warmup_steps=warmup_steps, decay=decay, total_steps=total_steps,
                                      cooldown_steps=cooldown_steps)
    if optimizer == "adam":
        opt = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    elif optimizer == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'adam' or 'adamw'")
    opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt) if grad_clip > 0 else opt
    return optax.MultiSteps(opt, every_k_schedule=accum_steps).gradient_transformation() if accum_steps > 1 else opt


DECAYS = ("constant", "cosine", "cooldown")


def learning_rate_schedule(*, lr: float, warmup_steps: int = 0, decay: str = "constant",
                           total_steps: int = 1, cooldown_steps: int = 0) -> optax.Schedule:
    """Optimizer step → learning rate: linear warm-up from 0, then one of
    - ``"constant"``: lr to the end (Ho et al.: lr·min(step/warmup, 1));
    - ``"cosine"``: cosine to 0 at ``total_steps``;
    - ``"cooldown"``: lr until the last ``cooldown_steps``, then linearly to 0 at ``total_steps``
      (warm-up–stable–decay: Hu et al. 2024, Hägele et al. 2024, who find a short final decay matches
      a cosine schedule fitted to the run's length)."""
    warmup = optax.linear_schedule(0.0, lr, warmup_steps) if warmup_steps else optax.constant_schedule(lr)
    if cooldown_steps and decay != "cooldown":
        raise ValueError(f"cooldown_steps={cooldown_steps} is read only with decay 'cooldown' (decay is {decay!r}): "
                         "set decay='cooldown', or cooldown_steps=0")
    if decay == "constant":
        return warmup
    if decay == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1))
    if decay == "cooldown":
        check_cooldown(warmup_steps=warmup_steps, total_steps=total_steps, cooldown_steps=cooldown_steps)
        start = total_steps - cooldown_steps
        return optax.join_schedules([warmup, optax.linear_schedule(lr, 0.0, cooldown_steps)], [start])
    raise ValueError(f"unknown learning-rate decay {decay!r}; choose one of {DECAYS}")


def check_cooldown(*, warmup_steps: int, total_steps: int, cooldown_steps: int, prefix: str = "") -> None:
    """The cool-down must be a positive number of steps that starts after the warm-up ends."""
    if not 0 < cooldown_steps <= total_steps - warmup_steps:
        raise ValueError(f"{prefix}cooldown_steps={cooldown_steps} with decay 'cooldown': the final decay needs "
                         f"1 to {total_steps - warmup_steps} steps ({total_steps} steps less a warm-up of "
                         f"{warmup_steps}); set it in that range or choose another decay")


def ema_decay_at(step, decay: float, warmup: bool):
    """EMA decay, optionally warmed up as min(decay, (1 + t)/(10 + t))."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)


def create_train_state(key, params, tx: optax.GradientTransformation, num_steps: int) -> TrainState:
    """A fresh state around initial ``params``; the EMA starts equal to them (as its own buffers, so
    the state can be donated to a jitted step)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(params), loss_history=timestep_sampling.init_loss_history(num_steps),
                      rng=jnp.copy(jax.random.key_data(key)))


def apply_gradients(state: TrainState, loss, grads, *, tx: optax.GradientTransformation, ema_decay: float,
                    ema_warmup: bool, loss_history: Optional[timestep_sampling.LossHistory] = None,
                    accum_steps: int = 1):
    """(next state, gradient norm, finite): the optimizer update and the EMA, applied only when the
    loss, the gradients and the updated parameters and EMA are all finite (``finite``), so the state a
    host would save after a bad step is the last good one. A finite loss and gradient can still give
    infinite parameters (an overflowing update), hence the check after the update.

    Gradient accumulation (``tx`` from ``make_optimizer(accum_steps=k)``): ``state.step`` counts
    calls, one per micro-batch; the parameters change on every k-th call only, and so does the EMA,
    whose decay (and warm-up) counts optimizer steps, step // k: k accumulated micro-batches leave
    the parameters and EMA as one call on their union does (exactly so in one process with uniform
    timesteps; see ``train_step``). The returned gradient norm is this micro-batch's, before
    averaging and clipping — noisier than the norm of the update applied, so not comparable across k."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    optimizer_step, micro = jnp.divmod(state.step, accum_steps)
    decay = jnp.where(micro == accum_steps - 1, ema_decay_at(optimizer_step, ema_decay, ema_warmup), 1.0)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params) & all_finite(ema)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    history = state.loss_history if loss_history is None else keep(loss_history, state.loss_history)
    return state.replace(step=state.step + 1, params=keep(params, state.params), ema_params=keep(ema, state.ema_params),
                         opt_state=keep(opt_state, state.opt_state), loss_history=history), grad_norm, finite


def all_finite(tree) -> jax.Array:
    """One boolean: every element of every floating leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class _Draws(NamedTuple):
    """One call's share of its optimizer step's draws (``train_step``): t int[B], the importance
    weights [B], ε and the SDDPM's second draw z [B, ...], the network's conditioning inputs and the
    dropout key."""
    t: jax.Array
    weights: jax.Array
    noise: jax.Array
    step_noise: jax.Array
    cond: dict
    k_drop: jax.Array


def _draws(state: TrainState, batch: dict, *, schedule: Schedule, timestep_sampler: str, num_classes: int,
           class_dropout: float, accum_steps: int, condition: Optional[Callable], caption_dropout: float) -> _Draws:
    """The draws for the k·B rows of optimizer step step // k from ``fold_in(rng, step // k)``, each
    cut to this call's micro-batch step % k (dropout's key folded with it instead); see ``train_step``."""
    optimizer_step, micro = jnp.divmod(state.step, accum_steps)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), optimizer_step)
    # Five keys, the fourth unused, so that k_label stays the fifth: the label and caption dropout
    # draws stay those that the bitwise reference tests and reproduced runs expect.
    k_t, k_noise, k_drop, _, k_label = jax.random.split(key, 5)
    if accum_steps > 1:
        k_drop = jax.random.fold_in(k_drop, micro)
    x0 = batch["image"]
    B = x0.shape[0]
    rows = B * accum_steps
    mine = lambda draw: draw.reshape((accum_steps, B) + draw.shape[1:])[micro]
    if timestep_sampler == "importance":
        t, weights = map(mine, timestep_sampling.importance_sample(state.loss_history, k_t, rows))
    else:
        t, weights = map(mine, timestep_sampling.DRAWS[timestep_sampler](k_t, rows, schedule.num_steps))
    cond = _conditioning(batch, k_label, k_noise, rows, mine, num_classes=num_classes, class_dropout=class_dropout,
                         condition=condition, caption_dropout=caption_dropout)
    noise = mine(jax.random.normal(k_noise, (rows,) + x0.shape[1:], x0.dtype))
    # The SDDPM's forward pair needs a second draw; the other losses leave it unused (and compiled away).
    step_noise = mine(jax.random.normal(jax.random.fold_in(k_noise, 1), (rows,) + x0.shape[1:], x0.dtype))
    return _Draws(t, weights, noise, step_noise, cond, k_drop)


def _conditioning(batch: dict, k_label, k_noise, rows: int, mine: Callable, *, num_classes: int,
                  class_dropout: float, condition: Optional[Callable], caption_dropout: float) -> dict:
    """The network's conditioning inputs for this micro-batch (``mine`` cuts a draw for all ``rows``
    to it): labels or captions, each dropped to the null one with its probability, and what
    ``condition`` makes from the images."""
    cond = {}
    if num_classes > 0:
        drop = mine(jax.random.bernoulli(k_label, class_dropout, (rows,)))
        cond["labels"] = jnp.where(drop, num_classes, batch["label"])
    if "tokens" in batch:
        drop = mine(jax.random.bernoulli(k_label, caption_dropout, (rows,)))
        cond["tokens"] = jnp.where(drop[:, None], null_caption(batch["tokens"].shape[1]), batch["tokens"])
    if condition is not None:
        cond.update(condition(mine(jax.random.split(jax.random.fold_in(k_noise, 2), rows)), batch["image"]))
    return cond


def _weighted_loss(params, x0, draws: _Draws, *, apply_fn: Callable, schedule: Schedule, loss_kwargs: dict):
    """(mean over the batch of weights·L(t), the per-example loss terms) of ``params`` on x0 [B, ...]
    with ``draws`` (``losses.training_losses``)."""
    model_fn = lambda x, ts, **c: apply_fn({"params": params}, x, ts, train=True,
                                           rngs={"dropout": draws.k_drop}, **c)
    terms = losses.training_losses(model_fn, schedule, x0, draws.t, draws.noise, cond=draws.cond,
                                   step_noise=draws.step_noise, **loss_kwargs)
    return jnp.mean(draws.weights * terms["loss"]), terms


def train_step(state: TrainState, batch: dict, *, apply_fn: Callable, tx: optax.GradientTransformation,
               schedule: Schedule, loss_kwargs: dict, ema_decay: float = 0.9999, ema_warmup: bool = False,
               timestep_sampler: str = "uniform", num_classes: int = 0, class_dropout: float = 0.0,
               accum_steps: int = 1, condition: Optional[Callable] = None,
               caption_dropout: float = 0.0):
    """One optimisation step on ``batch`` ({'image' [B, ...] in [−1, 1], 'label' int[B], and for a
    text-conditioned model 'tokens' int[B, L]}).

    Samples t (uniformly, stratified over the batch or by importance), ε (and the SDDPM's second
    draw z) and dropout from ``fold_in(rng, step)``. The metrics' ``update_finite`` is False when
    the step was skipped as non-finite (``apply_gradients``).

    ``accum_steps`` = k > 1 (with ``make_optimizer(accum_steps=k)``): ``batch`` is micro-batch
    step % k of optimizer step step // k, whose whole batch is k·B rows. The draws are made for those
    k·B rows from ``fold_in(rng, step // k)`` and this call keeps its own B, so the k calls see the
    noise and timesteps one call on the k·B rows would (dropout is drawn per call). That
    holds in one process with uniform timesteps: with several processes a micro-batch gathers each
    host's j-th chunk, not rows jB…(j+1)B of the global batch, and importance sampling updates its
    loss history between the calls; the draws stay i.i.d. either way, only not the large batch's.

    ``condition(keys [B], x0) -> {name: [B, ...]}``: network inputs made from the batch (flipped on
    the host where configured, ``pipeline.step_batches``) itself with one key per row, e.g. a super-resolution stage's augmented low-resolution image
    (``cascade.training_condition``, Ho et al. 2021).

    Conditioning dropout for classifier-free guidance (Ho & Salimans 2021): with ``num_classes``
    > 0 each label becomes the null label with probability ``class_dropout``; with 'tokens' each
    caption becomes the null caption (``tokenizer.null_caption``, the empty prompt) with
    probability ``caption_dropout`` (GLIDE, Nichol et al. 2022, §3.2: 20%). A model takes labels
    or a caption, never both, so the two share one key.
    """
    draws = _draws(state, batch, schedule=schedule, timestep_sampler=timestep_sampler, num_classes=num_classes,
                   class_dropout=class_dropout, accum_steps=accum_steps, condition=condition,
                   caption_dropout=caption_dropout)
    loss_fn = functools.partial(_weighted_loss, x0=batch["image"], draws=draws, apply_fn=apply_fn, schedule=schedule,
                                loss_kwargs=loss_kwargs)
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    history = None
    if timestep_sampler == "importance":
        history = timestep_sampling.update_loss_history(state.loss_history, draws.t, terms["loss"])
    new_state, grad_norm, finite = apply_gradients(state, loss, grads, tx=tx, ema_decay=ema_decay,
                                                   ema_warmup=ema_warmup, loss_history=history,
                                                   accum_steps=accum_steps)
    metrics = {"loss": loss, "mse": jnp.mean(terms["mse"]), "grad_norm": grad_norm, "update_finite": finite}
    if "vlb" in terms:
        metrics["vlb"] = jnp.mean(terms["vlb"])
    return new_state, metrics


def random_shift(key, images, max_shift: int):
    """Translate each image by up to ``max_shift`` pixels in each direction, filling with −1 (black)."""
    B, H, W, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (B, 2), 0, 2 * max_shift + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (H, W, img.shape[-1]))
    return jax.vmap(crop)(padded, offsets)


def classifier_step(state: TrainState, batch: dict, *, apply_fn: Callable, tx: optax.GradientTransformation,
                    ema_decay: float = 0.999, ema_warmup: bool = True, max_shift: int = 0,
                    schedule: Optional[Schedule] = None, accum_steps: int = 1):
    """One cross-entropy step for a classifier of clean images, or, given ``schedule``, for ADM's
    noisy classifier p_φ(y | x_t, t) on x_t = q_sample(x_0, t, ε) at uniform t (Dhariwal & Nichol 2021, §4).
    ``accum_steps``: as in ``apply_gradients`` (each micro-batch draws its own shifts and t)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    k_shift, k_t, k_noise, k_drop = jax.random.split(key, 4)
    x, labels = batch["image"], batch["label"]
    if max_shift:
        x = random_shift(k_shift, x, max_shift)
    args = ()
    if schedule is not None:
        t = jax.random.randint(k_t, (x.shape[0],), 0, schedule.num_steps)
        x = gaussian.q_sample(schedule, x, t, jax.random.normal(k_noise, x.shape, x.dtype))
        args = (t,)

    def loss_fn(params):
        out = apply_fn({"params": params}, x, *args, train=True, rngs={"dropout": k_drop})
        logits = out[0] if isinstance(out, tuple) else out
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, grad_norm, finite = apply_gradients(state, loss, grads, tx=tx, ema_decay=ema_decay,
                                                   ema_warmup=ema_warmup, accum_steps=accum_steps)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return new_state, {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm, "update_finite": finite}
