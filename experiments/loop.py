"""The training loops behind ``experiments.train`` and ``experiments.train_classifier``: data, sharded
step, checkpoints, logs, samples."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from diffusion import gaussian, parallel, samplers, training, visualize, xla_flags
from diffusion.cascade import augmentation
from diffusion.checkpoints import Checkpointer
from diffusion.data import datasets, pipeline
from diffusion.latent import networks
from experiments import build, heldout, metric_writers, runs
from experiments.latent import autoencoder_runs
from experiments.text import captioning
from experiments.unclip import stage_runs


class NonFiniteStepError(FloatingPointError):
    """A step's loss, or the parameters or EMA it would produce, were not finite; it was not applied."""


PREEMPTED_STATUS = 128 + signal.SIGTERM   # 143: what a shell reports for a process that SIGTERM ended


class Preempted(SystemExit):
    """The run saved its current step on SIGTERM or a preemption notice and stopped before
    ``train.num_steps``; as ``SystemExit`` it ends the process with ``PREEMPTED_STATUS``."""


@contextlib.contextmanager
def sigterm_flag():
    """A ``threading.Event`` that SIGTERM sets while the block runs, instead of ending the process.

    Installed only in a single process's main thread: with several processes, JAX's preemption
    service (``jax.distributed.initialize``) owns SIGTERM and ``Checkpointer.reached_preemption``
    reports it at a step every process agrees on; a handler installed outside Python (that
    service's, in a one-process cluster job) is left alone too. Afterwards the previous handler is
    restored, and a SIGTERM that the block received but did not act on (the flag still set when it
    ends normally) is delivered to it.
    """
    flag = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread() or previous is None:
        yield flag
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
    if flag.is_set():
        signal.raise_signal(signal.SIGTERM)


def build_sample_fn(config, model, schedule, mesh, *, sampler=None, steps=None, keep_every=0, space=None):
    """A compiled ``fn(ema_params, x_T, key, labels) -> samples`` sharded over the devices (the EMA
    in the train state's own layout: replicated or FSDP-sharded); a latent
    run's samples are decoded to images in ``space`` (``first_stage.LatentSpace``). A super-resolution
    stage's ``fn`` also takes the low-resolution images [B, h, w, C] it is conditioned on."""
    step, run_schedule, timesteps = build.make_sampler(config, schedule, sampler=sampler, steps=steps)

    def sample_fn(params, x_T, key, labels, low_res=None):
        cond = build.conditioning(config, labels)
        if low_res is not None:
            key, k_aug = jax.random.split(key)
            cond = dict(cond or {}, **build.super_resolution_inputs(config, schedule, k_aug, low_res))
        out = samplers.sample(step, build.make_denoiser(model, params), run_schedule, x_T, key,
                              timesteps=timesteps, keep_every=keep_every, cond=cond)
        return autoencoder_runs.decoded(space, out)

    rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)
    return jax.jit(sample_fn, in_shardings=(None, dat, rep, dat, dat))


def write_samples(config, sample_fn, params, mesh, workdir: Path, step: int, train_split):
    """A PNG grid (images) or the data/samples/trajectory figure (2-D toy) in ``<workdir>/samples``."""
    n = config.sample.num
    n -= n % mesh.devices.size
    key = jax.random.key(config.seed + 1)   # the same noise at every step, so grids are comparable
    x_T = jax.random.normal(key, (n,) + build.data_shape(config))
    labels = build.grid_condition(config, n)
    low_res = None
    if config.data.low_resolution:   # conditioned on the first training images' own low resolution
        first = datasets.to_model_range(train_split.head(n).images)
        low_res = augmentation.low_resolution(first, config.data.low_resolution)
    out = jax.tree.map(parallel.gather, sample_fn(params, x_T, jax.random.fold_in(key, 1), labels, low_res))
    if jax.process_index() != 0:
        return None
    if config.model.kind == "mlp":
        final, traj = out
        return visualize.toy_figure(train_split.head(n).images, final, traj["x_t"],
                                    workdir / "samples" / f"step_{step:07d}.png", title=f"step {step}")
    if low_res is not None:   # the upsampled conditioning above the samples
        out = np.concatenate([np.asarray(augmentation.upsample(low_res, config.data.image_size)), out])
    grid = visualize.image_grid(out)
    return visualize.save_png(grid, workdir / "samples" / f"step_{step:07d}.png", scale=2)


def prepare_run(config: ml_collections.ConfigDict, workdir) -> tuple[Path, "jax.sharding.Mesh"]:
    """Validate, create ``workdir``, build the (``data``, ``fsdp``) mesh, check the batch and, with
    gradient accumulation, its micro-batches."""
    build.validate(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh(fsdp=config.parallel.fsdp, what="config field parallel.fsdp")
    batch, k = config.train.batch_size, config.optim.grad_accum_steps
    if batch % k:
        raise ValueError(f"config field train.batch_size={batch} does not split into optim.grad_accum_steps={k} "
                         "equal micro-batches")
    parallel.check_batch(batch // k, mesh, what="train.batch_size" + (" / optim.grad_accum_steps" if k > 1 else ""))
    return workdir, mesh


def jit_step(step_fn: Callable, state, mesh) -> Callable:
    """``step_fn(state, batch) -> (state, metrics)`` compiled for ``state``'s own layout (kept, and
    donated), a batch split over every device and replicated metrics; the batch arrives as the
    pipeline makes it (uint8 images) and ``step_fn`` sees ``pipeline.model_inputs`` of it (floats in
    [−1, 1]), converted on the device. ``state``: arrays or sharded ``jax.ShapeDtypeStruct``s."""
    layout = jax.tree.map(lambda a: a.sharding, state)
    on_device = lambda state, batch: step_fn(state, pipeline.model_inputs(batch))
    return jax.jit(on_device, in_shardings=(layout, parallel.data_sharded(mesh)),
                   out_shardings=(layout, parallel.replicated(mesh)), donate_argnums=0)


def restore_or_init(config, workdir: Path, init_fn, mesh, *, fall_back: bool = False
                    ) -> tuple[training.TrainState, int, Checkpointer]:
    """(state, first step, checkpointer): the latest checkpoint in ``workdir``, or ``init_fn(key)``,
    laid out by ``parallel.fsdp_shardings`` (built sharded; a checkpoint written with another mesh
    is read into this one's layout, as orbax restores to the template's shardings).

    ``config.json`` is written only once the checkpoint is known to fit the config, so a refused
    resume leaves the run's own config in place. A corrupt latest checkpoint is an error unless
    ``fall_back``, which moves it aside and resumes from the newest one that verifies.
    """
    key = jax.random.key(config.seed)
    layout = parallel.fsdp_shardings(jax.eval_shape(init_fn, key), mesh)
    state = xla_flags.one_shot_jit(init_fn, out_shardings=layout)(key)   # compiled cheaply: it runs once
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                        keep_period=config.train.keep_period)
    start = 0
    try:
        if ckpt.latest_step() is not None:
            state, meta = ckpt.restore_latest_good(state, config=config.to_dict(), fall_back=fall_back)
            start = int(meta["data_position"])
            if start > config.train.num_steps:
                raise ValueError(f"config field train.num_steps={config.train.num_steps} is below step {start} "
                                 f"already reached in {workdir}: set --config.train.num_steps above {start} to "
                                 "train on, or sample and evaluate the run as it is")
            print(f"resumed from {ckpt.directory} at step {start}")
    except BaseException:
        ckpt.close()
        raise
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=list))
    return state, start, ckpt


def training_batches(config, split: datasets.Split | datasets.RecordSplit) -> grain.IterDataset:
    """This process's batches of ``split`` (in memory, or read record by record: ``pipeline.source_of``)
    for every step (``pipeline.step_batches`` of ``train.batch_size`` rows, seeded by ``seed``, flipped
    where ``data.random_flip``), prefetched by ``data.read_threads`` threads in ``data.workers`` grain
    processes. The batch is checked here, before any work: it must divide over the processes and fit
    in the data."""
    batches = pipeline.step_batches(pipeline.source_of(split), global_batch=config.train.batch_size,
                                    seed=config.seed, shard=grain.sharding.ShardByJaxProcess(),
                                    random_flip=config.data.random_flip, what="config field train.batch_size")
    return pipeline.prefetched(batches, workers=config.data.workers, threads=config.data.read_threads)


def run_loop(config, workdir: Path, state, start: int, ckpt: Checkpointer, step_fn, batches: grain.IterDataset,
             mesh, on_sample: Optional[Callable] = None, desc: str = "train", evaluate: Optional[Callable] = None):
    """Steps ``start`` … ``train.num_steps`` on ``batches`` (``training_batches``, continued where
    the checkpoint at ``start`` left the stream) with a progress bar, logs, checkpoints and
    ``on_sample(step, state)``; stops on a non-finite loss or update (the step that made it is not
    applied, so nothing non-finite is saved). With ``optim.grad_accum_steps`` = k each step is k
    calls of ``step_fn`` on consecutive micro-batches of its rows (its logged metrics their means);
    steps count optimizer updates, ``state.step`` calls.

    Every ``train.log_every`` steps one row of scalars goes to ``metric_writers.create``'s writers
    (metrics.jsonl, TensorBoard): the step's metrics (loss, grad_norm, …), the learning rate the
    update applied (``lr``), and ``steps_per_sec`` and ``images_per_sec`` since the last row; every
    ``train.eval_every`` steps (a logging step too) ``evaluate(state)``'s scalars join the row, and
    the picture ``on_sample`` returns the path of is logged as the image ``samples``. The time
    ``evaluate`` takes counts in no throughput.

    A step's metrics are read on the host while the next step runs, except on steps that log,
    checkpoint or sample, which wait for their own: reading after every step left an H200 idle 25%
    of the CIFAR-10 step (benchmarks/RESULTS.md). A non-finite step is therefore reported after the
    next one was launched on the state it left unchanged; that step's result is discarded with the
    run, and every save happens after its own step was read.

    Saves are asynchronous (``Checkpointer``): the loop goes on while a checkpoint is written. On
    SIGTERM (``sigterm_flag``) or when every process reaches JAX's preemption sync point
    (``Checkpointer.reached_preemption``), the step in flight is finished and read like a checkpoint
    step (a non-finite one still stops the run without a save), saved, waited for, and the run
    raises ``Preempted``: one line names the checkpoint and says to rerun the same command, which
    resumes from it bit for bit. The status is non-zero (143, as if SIGTERM had ended the process)
    because the training is unfinished: a cluster scheduler or job controller reads 0 as a job that
    completed and would not requeue or restart it. On the last step the run is finishing anyway:
    it saves and samples as scheduled, and the signal then goes to the handler that was there before."""
    k = config.optim.grad_accum_steps
    writer = metric_writers.create(workdir, start)
    lr_at = build.learning_rate_schedule(config)
    total = config.train.num_steps
    bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    window_start, window_steps = time.perf_counter(), 0

    def read(step: int, calls: list) -> dict:
        """``step``'s metrics on the host (the mean over its calls); raises if it was non-finite."""
        update_finite = all([bool(m.pop("update_finite")) for m in calls])
        metrics = {name: np.mean([float(m[name]) for m in calls]) for name in calls[0]}
        loss = float(metrics["loss"])
        if not (math.isfinite(loss) and update_finite):
            what = f"loss ({loss})" if not math.isfinite(loss) else "parameters or EMA after the update"
            raise NonFiniteStepError(
                f"non-finite {what} at step {step}: the run stops here, the step is not applied and the "
                f"last finite checkpoint (step {ckpt.latest_step()}) is kept; lower optim.lr or check the data")
        bar.update(1)
        return metrics

    pending = None    # (step, its calls' metrics) not yet read on the host
    stream = iter(batches)
    with sigterm_flag() as stop:
        try:
            if start:
                ckpt.restore_data(stream)
            for step in range(start, total):
                local = next(stream)
                calls = []
                for micro in micro_batches(local, k):
                    batch = parallel.global_batch(micro, mesh)
                    if step == start and not calls:
                        step_fn = parallel.compiled_together(step_fn, state, batch)
                    state, metrics = step_fn(state, batch)
                    calls.append(metrics)
                if pending is not None:
                    read(*pending)
                window_steps += 1
                done = step + 1
                # Every process asks at every step (JAX's agreed preemption step); SIGTERM is this one's.
                notice = ckpt.reached_preemption(done)
                preempted = (notice or stop.is_set()) and done < total
                evaluating = evaluate is not None and config.train.eval_every > 0 and done % config.train.eval_every == 0
                log = done % config.train.log_every == 0 or done == total or evaluating
                save = done % config.train.checkpoint_every == 0 or done == total or preempted
                sample = on_sample is not None and (done % config.train.sample_every == 0 or done == total)
                if not (log or save or sample):
                    pending = (step, calls)
                    continue
                pending = None
                metrics = read(step, calls)     # this step's own finite check, before any save of it
                if log:
                    rate = window_steps / (time.perf_counter() - window_start)
                    scalars = {name: float(value) for name, value in metrics.items()}
                    scalars.update(lr=float(lr_at(step)), steps_per_sec=rate,
                                   images_per_sec=rate * config.train.batch_size)
                    if evaluating:
                        scalars.update(evaluate(state))
                    writer.write_scalars(done, scalars)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_s=f"{rate:.2f}")
                    window_start, window_steps = time.perf_counter(), 0
                if save:
                    ckpt.save(done, state, config=config.to_dict(), data_position=done, data=stream)
                if preempted:
                    ckpt.wait()
                    why = "SIGTERM" if stop.is_set() else "a preemption notice"
                    stop.clear()      # acted on: not passed on to the previous handler
                    if jax.process_index() == 0:
                        bar.write(f"stopped by {why} at step {done} of {total}: checkpoint saved in "
                                  f"{ckpt.directory / str(done)}; rerun the same command to resume from it")
                    raise Preempted(PREEMPTED_STATUS)
                if sample:
                    path = on_sample(done, state)
                    if path is not None:
                        bar.write(f"step {done}: samples in {path}")
                        with Image.open(path) as picture:
                            writer.write_images(done, {"samples": np.asarray(picture.convert("RGB"))})
        finally:
            try:
                stream.close()
                bar.close()
                writer.close()
            finally:   # last, so that a save that failed in the background is the error the run ends with
                ckpt.close()
    return state


def micro_batches(local: dict, k: int) -> list[dict]:
    """This host's rows of one step as ``k`` consecutive equal micro-batches (gradient accumulation)."""
    n = len(local["image"]) // k
    return [jax.tree.map(lambda a: a[j * n:(j + 1) * n], local) for j in range(k)]


def init_state(config, model, schedule, tx, key) -> training.TrainState:
    """A fresh train state for the diffusion model of ``config``."""
    return training.create_train_state(key, build.init_params(model, config, key), tx, schedule.num_steps)


def make_train_step(config, model, schedule, tx) -> Callable:
    """``training.train_step`` with ``config``'s settings bound: ``fn(state, batch)``."""
    return partial(
        training.train_step, apply_fn=model.apply, tx=tx, schedule=schedule,
        loss_kwargs=build.loss_kwargs(config), ema_decay=config.ema.decay, ema_warmup=config.ema.warmup,
        timestep_sampler=config.diffusion.timestep_sampler, num_classes=config.model.num_classes,
        class_dropout=config.data.class_dropout, caption_dropout=config.train.caption_dropout,
        accum_steps=config.optim.grad_accum_steps, condition=build.make_condition(config, schedule))


def run_latent_scale(data, stored) -> float:
    """A latent run's scale s from its ``data`` config section: its own ``latent_scale`` when > 0,
    else the one the run ``stored`` (its saved data section, or None) measured for the same
    autoencoder, else 0 (not measured yet)."""
    if data["latent_scale"] > 0:
        return data["latent_scale"]
    if stored is not None and stored["autoencoder"] == data["autoencoder"] and stored["latent_scale"] > 0:
        return stored["latent_scale"]
    return 0.0


def latent_training_data(config, workdir: Path, train_split: datasets.Split, mesh
                         ) -> tuple[ml_collections.ConfigDict, autoencoder_runs.LatentSpace, datasets.Split]:
    """(config with its ``data.latent_scale``, the latent space, the training split as latents
    z = s·ℰ(x)) of a latent-diffusion run (Rombach et al. 2022).

    The frozen EMA encoder encodes the whole split once, here, and training reads the cached
    latents (the KL model's mean, as ``Autoencoder.encode``): encoding each batch inside the jitted
    step repeats the encoder's forward pass at full resolution every step. Measured once on the
    project's 2-core CPU (2026-11-30, shared with other jobs, load ~3.9) for
    configs/latent/fashion_mnist_kl_f4.py with a kl-f4 encoder, batch 64: cached 2.13 steps/s,
    on the fly 1.91 (the encoder is ~10% of a step beside the 64-channel U-Net's forward and
    backward); encoding the 60,000 training images took 25.6 s, repaid after ~470 of the 20,000
    steps, and the cache holds 46 MB. The scale s is the config's own when > 0
    (a checkpoint made with another is refused, as data.latent_scale is a compatibility field), else
    the one the run stored in its ``config.json`` (a resume: never measured again), else LDM's 1/std
    of these latents, measured once here; ``restore_or_init`` then writes it with the config, where
    sampling and evaluation read it.
    """
    autoencoder = autoencoder_runs.load_autoencoder(config.data.autoencoder)
    latents = parallel.encode_split(autoencoder.encode, train_split, mesh)
    stored = runs.load_config(workdir).data if (workdir / "config.json").exists() else None
    scale = run_latent_scale(config.data, stored) or networks.scale_factor(latents.images)
    config = config.copy_and_resolve_references()
    config.data.latent_scale = float(scale)
    space = autoencoder_runs.LatentSpace(autoencoder, float(scale))
    return config, space, dataclasses.replace(latents, images=(latents.images * scale).astype(np.float32))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, fall_back: bool = False) -> training.TrainState:
    """Train (or resume) the diffusion model described by ``config`` in ``workdir``; returns the final
    state. ``fall_back``: resume from the newest checkpoint that verifies when the latest is corrupt."""
    workdir, mesh = prepare_run(config, workdir)
    if captioning.is_conditioned(config):
        captioning.keep_tokenizer(config, workdir)
    train_split, heldout_split = build.training_data(config)
    space = None
    if config.data.autoencoder:
        config, space, train_split = latent_training_data(config, workdir, train_split, mesh)
    model = build.make_model(config)
    if config.model.kind == stage_runs.PRIOR:   # CLIP image embeddings, embedded once by the CLIP the prior holds
        train_split = stage_runs.prior_training_data(config, train_split, mesh, model)
    batches = training_batches(config, train_split)
    schedule = build.make_schedule(config)
    tx = build.make_optimizer(config)
    state, start, ckpt = restore_or_init(config, workdir, partial(init_state, config, model, schedule, tx), mesh,
                                         fall_back=fall_back)
    step_fn = jit_step(make_train_step(config, model, schedule, tx), state, mesh)
    on_sample = None   # an unCLIP stage draws nothing alone: experiments.sample --unclip draws through both
    if config.model.kind not in stage_runs.KINDS:
        sample_fn = build_sample_fn(config, model, schedule, mesh, space=space,
                                    keep_every=max(config.sample.steps // 20, 1) if config.model.kind == "mlp" else 0)
        on_sample = lambda done, s: write_samples(config, sample_fn, s.ema_params, mesh, workdir, done, train_split)
    evaluate = None
    if config.train.eval_every:
        measure = heldout.make_evaluator(config, model, schedule, heldout_split, mesh, state.ema_params,
                                         encode=space.encode if space else None)
        evaluate = lambda s: measure(s.ema_params)
    return run_loop(config, workdir, state, start, ckpt, step_fn, batches, mesh, on_sample, evaluate=evaluate)


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
    workdir, mesh = prepare_run(config, workdir)
    train_split, heldout = build.training_data(config, labels_used=True)
    batches = training_batches(config, train_split)
    model = build.make_classifier(config)
    noisy = config.classifier.kind == "noisy"
    schedule = build.make_schedule(config) if noisy else None
    tx = build.make_optimizer(config)

    def init(k):
        x = jnp.zeros((1,) + build.data_shape(config))
        args = (jnp.zeros((1,), jnp.int32),) if noisy else ()
        return training.create_train_state(k, model.init(k, x, *args)["params"], tx, 1)

    state, start, ckpt = restore_or_init(config, workdir, init, mesh, fall_back=fall_back)
    step_fn = jit_step(partial(training.classifier_step, apply_fn=model.apply, tx=tx, ema_decay=config.ema.decay,
                               ema_warmup=config.ema.warmup, max_shift=config.classifier.max_shift,
                               schedule=schedule, accum_steps=config.optim.grad_accum_steps), state, mesh)
    state = run_loop(config, workdir, state, start, ckpt, step_fn, batches, mesh, desc="classifier")
    timesteps = (0, config.diffusion.num_steps // 4, config.diffusion.num_steps // 2) if noisy else (None,)
    accuracies = heldout_accuracy(config, model, state.ema_params, heldout, mesh, timesteps)
    report = {"heldout_examples": len(heldout)} | {
        "accuracy" if t is None else f"accuracy_t{t}": a for t, a in zip(timesteps, accuracies, strict=True)}
    if jax.process_index() == 0:
        (workdir / "accuracy.json").write_text(json.dumps(report, indent=2))
        (workdir / "classifier.msgpack").write_bytes(flax.serialization.to_bytes(state.ema_params))
        print("held-out " + ", ".join(f"{k}={v:.4f}" for k, v in report.items() if k != "heldout_examples"))
    return state, report
