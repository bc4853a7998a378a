"""The held-out measurements a diffusion run logs every ``train.eval_every`` steps (``eval/loss``,
``eval/bpd``): fixed examples with fixed timesteps and noise, so the curve moves with the model only."""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import losses, parallel
from diffusion.data import datasets
from experiments import build, nll

LOSS_BATCHES = 4      # held-out batches of train.batch_size rows for eval/loss
BOUND_EXAMPLES = 8    # held-out images for eval/bpd: the full bound costs T network passes per image


def loss_batches(config, heldout: datasets.Split | datasets.RecordSplit, num_steps: int,
                 batches: int = LOSS_BATCHES) -> list[dict]:
    """The first ``batches`` (fewer when the split is short) held-out batches of
    ``train.batch_size`` rows (only their examples read), each with its draws fixed from ``seed + 2``:
    timesteps ``t``, ``noise``, the SDDPM's ``step_noise`` and one key per row (raw data) for a
    super-resolution stage's conditioning (``cond_key``). Host arrays, the same on every process.
    Batch i's draws do not depend on the split, so two splits' losses compare pairwise."""
    B = config.train.batch_size
    count = min(batches, len(heldout) // B)
    if count == 0:
        raise ValueError(f"config field train.eval_every={config.train.eval_every} measures the held-out loss on "
                         f"batches of train.batch_size={B}, but the held-out split has {len(heldout)} examples: "
                         "raise data.holdout_fraction or set train.eval_every=0")
    heldout = heldout.head(count * B)
    batches = []
    for i in range(count):
        x0 = datasets.to_model_range(heldout.images[i * B:(i + 1) * B])
        k_t, k_noise, k_step, k_cond = jax.random.split(jax.random.fold_in(jax.random.key(config.seed + 2), i), 4)
        batches.append({"image": x0, "label": heldout.labels[i * B:(i + 1) * B],
                        "t": np.asarray(jax.random.randint(k_t, (B,), 0, num_steps)),
                        "noise": np.asarray(jax.random.normal(k_noise, x0.shape)),
                        "step_noise": np.asarray(jax.random.normal(k_step, x0.shape)),
                        "cond_key": np.asarray(jax.random.key_data(jax.random.split(k_cond, B)))})
    return batches


def loss_fn(config, model, schedule) -> Callable:
    """``fn(params, batch) -> loss [B]``: the training loss (``build.loss_kwargs``) of each row of a
    ``loss_batches`` batch at its own draws, the network in inference mode (no dropout, labels kept)."""
    condition = build.make_condition(config, schedule)

    def fn(params, batch):
        cond = dict(build.conditioning(config, batch["label"]) or {})
        if condition is not None:
            cond.update(condition(jax.random.wrap_key_data(batch["cond_key"]), batch["image"]))
        return losses.training_losses(build.make_denoiser(model, params), schedule, batch["image"], batch["t"],
                                      batch["noise"], cond=cond, step_noise=batch["step_noise"],
                                      **build.loss_kwargs(config))["loss"]
    return fn


def make_evaluator(config, model, schedule, heldout: datasets.Split | datasets.RecordSplit, mesh, params,
                   encode: Optional[Callable] = None) -> Callable[[object], dict]:
    """``fn(params) -> {"eval/loss": …, "eval/bpd": …}`` (floats, on every process; every process must
    call it): the mean held-out loss over ``loss_batches`` and, where the model has one
    (``nll.has_bound``), the variational bound in bits/dim of the first ``BOUND_EXAMPLES``
    held-out images (noise from ``seed + 3``). Both programs are compiled here, once, for ``params``'
    layout (replicated or FSDP-sharded) and batches split over every device; the data are placed on
    the devices once; only the first examples these need are read from the split. ``encode``: a latent
    run's ``x → z`` (those examples are encoded here)."""
    needed = max(LOSS_BATCHES * config.train.batch_size, BOUND_EXAMPLES)
    heldout = heldout.head(needed)
    if encode is not None:
        heldout = parallel.encode_split(encode, heldout, mesh)
    rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)
    per_row = loss_fn(config, model, schedule)
    batches = [jax.tree.map(lambda a: parallel.pad_to_devices(a, mesh), b)
               for b in loss_batches(config, heldout, schedule.num_steps)]
    batch_loss = parallel.compiled_together(
        jax.jit(lambda p, b: jnp.mean(per_row(p, b)), in_shardings=(None, dat), out_shardings=rep), params, batches[0])
    bound = None
    if nll.has_bound(config):
        n = min(BOUND_EXAMPLES, len(heldout))
        x = parallel.pad_to_devices(datasets.to_model_range(heldout.images[:n]), mesh)
        labels = parallel.pad_to_devices(heldout.labels[:n], mesh)
        total = nll.bound_fn(config, model, schedule)
        bound_key = jax.device_put(jax.random.key(config.seed + 3), rep)
        mean_bound = parallel.compiled_together(
            jax.jit(lambda p, x, y, k: jnp.mean(total(p, x, y, k)["total"][:n]), in_shardings=(None, dat, dat, rep),
                    out_shardings=rep), params, x, labels, bound_key)
        bound = lambda p: mean_bound(p, x, labels, bound_key)

    def evaluate(params) -> dict:
        out = {"eval/loss": sum(batch_loss(params, b) for b in batches) / len(batches)}
        if bound is not None:
            out["eval/bpd"] = bound(params)
        return {name: float(value) for name, value in out.items()}
    return evaluate
