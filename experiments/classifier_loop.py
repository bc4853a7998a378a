"""Training the classifiers behind ``experiments.train_classifier``: the feature classifier that
FID and the Inception Score use on 28×28 data, and ADM's noisy classifier p(y | x_t) for classifier
guidance (Dhariwal & Nichol 2021, §4), through ``loop.run_loop``; held-out accuracy on a whole split."""
from __future__ import annotations

import json
from functools import partial
from typing import Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import gaussian, parallel, training
from diffusion.data import datasets
from experiments import build, loop


def classifier_logits_fn(config, model, mesh):
    """A compiled ``fn(params, images[, timesteps]) -> logits`` sharded over ``data``."""
    rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)
    if config.classifier.kind == "noisy":
        return jax.jit(lambda p, x, t: model.apply({"params": p}, x, t), in_shardings=(rep, dat, dat))
    return jax.jit(lambda p, x: model.apply({"params": p}, x)[0], in_shardings=(rep, dat))


def heldout_accuracy(config, model, params, split, mesh, timesteps: Sequence[Optional[int]] = (None,)
                     ) -> list[float]:
    """Accuracy on a whole split at each of ``timesteps`` (None: the clean images; t: the noisy
    classifier on seeded x_t at that fixed step), the split (in memory or a lazy
    ``datasets.RecordSplit``) read once, 256 examples at a time."""
    logits_fn = classifier_logits_fn(config, model, mesh)
    schedule = build.make_schedule(config)
    rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)

    @partial(jax.jit, in_shardings=(rep, dat, rep, rep))
    def noisy_logits(params, x, key, timestep):   # the step traced, not baked in: one program for every t
        t = jnp.full((x.shape[0],), timestep, jnp.int32)
        return logits_fn(params, gaussian.q_sample(schedule, x, t, jax.random.normal(key, x.shape)), t)

    correct, batch = np.zeros(len(timesteps), np.int64), 256
    for i in range(0, len(split), batch):
        rows = split.rows(i, i + batch)
        x = parallel.pad_to_devices(datasets.to_model_range(rows.images), mesh)
        for k, timestep in enumerate(timesteps):
            logits = (logits_fn(params, x) if timestep is None
                      else noisy_logits(params, x, jax.random.key(i), jnp.int32(timestep)))
            correct[k] += np.sum(np.argmax(parallel.gather(logits)[:len(rows)], -1) == rows.labels)
    return [int(c) / len(split) for c in correct]


def train_classifier(config: ml_collections.ConfigDict, workdir, *, fall_back: bool = False
                     ) -> tuple[training.TrainState, dict]:
    """Train (or resume) a feature classifier or ADM noisy classifier; report held-out accuracy in
    ``<workdir>/accuracy.json`` and write the EMA weights to ``<workdir>/classifier.msgpack``."""
    workdir, mesh = loop.prepare_run(config, workdir)
    train_split, heldout = build.training_data(config, labels_used=True)
    batches = loop.training_batches(config, train_split)
    model = build.make_classifier(config)
    noisy = config.classifier.kind == "noisy"
    schedule = build.make_schedule(config) if noisy else None
    tx = build.make_optimizer(config)

    def init(k):
        x = jnp.zeros((1,) + build.data_shape(config))
        args = (jnp.zeros((1,), jnp.int32),) if noisy else ()
        return training.create_train_state(k, model.init(k, x, *args)["params"], tx, 1)

    state, start, ckpt = loop.restore_or_init(config, workdir, init, mesh, fall_back=fall_back)
    step_fn = loop.jit_step(partial(training.classifier_step, apply_fn=model.apply, tx=tx, ema_decay=config.ema.decay,
                                    ema_warmup=config.ema.warmup, max_shift=config.classifier.max_shift,
                                    schedule=schedule, accum_steps=config.optim.grad_accum_steps), state, mesh)
    state = loop.run_loop(config, workdir, state, start, ckpt, step_fn, batches, mesh, desc="classifier")
    timesteps = (0, config.diffusion.num_steps // 4, config.diffusion.num_steps // 2) if noisy else (None,)
    accuracies = heldout_accuracy(config, model, state.ema_params, heldout, mesh, timesteps)
    report = {"heldout_examples": len(heldout)} | {
        "accuracy" if t is None else f"accuracy_t{t}": a for t, a in zip(timesteps, accuracies, strict=True)}
    if jax.process_index() == 0:
        (workdir / "accuracy.json").write_text(json.dumps(report, indent=2))
        (workdir / "classifier.msgpack").write_bytes(flax.serialization.to_bytes(state.ema_params))
        print("held-out " + ", ".join(f"{k}={v:.4f}" for k, v in report.items() if k != "heldout_examples"))
    return state, report
