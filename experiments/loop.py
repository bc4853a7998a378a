"""The training loop behind every ``experiments.train*`` entry point (data, sharded step, checkpoints,
logs, samples, preemption) and the diffusion model's training (``train_and_evaluate``)."""
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
from typing import Callable, Optional

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from diffusion import parallel, samplers, training, visualize, xla_flags
from diffusion.cascade import augmentation
from diffusion.checkpoints import Checkpointer
from diffusion.data import datasets, pipeline
from experiments import build, heldout, metric_writers
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


@dataclasses.dataclass(frozen=True)
class Events:
    """What follows one step, handled in this order: log (``evaluate`` in its row), save, preempt, sample."""
    log: bool = False
    evaluate: bool = False
    save: bool = False
    preempt: bool = False
    sample: bool = False

    @property
    def reads_now(self) -> bool:
        """Whether the step's metrics are read on the host at once, not while the next step runs."""
        return self.log or self.save or self.sample


def events_after(done: int, total: int, *, log_every: int, checkpoint_every: int, sample_every: int = 0,
                 eval_every: int = 0, preemption_requested: bool = False) -> Events:
    """The events after the step that brought the run to ``done`` of ``total`` updates: each whose
    interval (0: never) divides ``done``, and at the last step a log, save and sample whatever the
    intervals; an evaluation is logged, a preemption saved, and a preemption at the last step is none."""
    last = done == total
    due = lambda interval: interval > 0 and done % interval == 0   # noqa: E731
    preempt = preemption_requested and done < total
    evaluate = due(eval_every)
    return Events(log=due(log_every) or last or evaluate, evaluate=evaluate,
                  save=due(checkpoint_every) or last or preempt, preempt=preempt,
                  sample=sample_every > 0 and (due(sample_every) or last))


def accumulated_step(state, step_fn: Callable, local: dict, mesh, k: int, *, first: bool):
    """One optimizer update, (state, step_fn, the calls' metrics): ``step_fn`` on each of the ``k``
    micro-batches of this host's rows ``local``, compiled for their layouts at the ``first`` call."""
    calls = []
    for micro in micro_batches(local, k):
        batch = parallel.global_batch(micro, mesh)
        if first and not calls:
            step_fn = parallel.compiled_together(step_fn, state, batch)
        state, metrics = step_fn(state, batch)
        calls.append(metrics)
    return state, step_fn, calls


class LoopHost:
    """The loop's host side: a step's metrics read, the throughput window, one handler per event."""

    def __init__(self, config, workdir: Path, start: int, ckpt: Checkpointer, desc: str):
        self.config, self.ckpt, self.total = config, ckpt, config.train.num_steps
        self.writer = metric_writers.create(workdir, start)
        self.lr_at = build.learning_rate_schedule(config)
        self.bar = tqdm(total=self.total, initial=start, desc=desc, unit="step", dynamic_ncols=True,
                        disable=jax.process_index() != 0)
        self.pending = None    # (step, its calls' metrics) not yet read on the host
        self.window_start, self.window_steps = time.perf_counter(), 0

    def read(self, step: int, calls: list) -> dict:
        """``step``'s metrics on the host (the mean over its calls); raises if it was non-finite."""
        update_finite = all([bool(m.pop("update_finite")) for m in calls])
        metrics = {name: np.mean([float(m[name]) for m in calls]) for name in calls[0]}
        loss = float(metrics["loss"])
        if not (math.isfinite(loss) and update_finite):
            what = f"loss ({loss})" if not math.isfinite(loss) else "parameters or EMA after the update"
            raise NonFiniteStepError(
                f"non-finite {what} at step {step}: the run stops here, the step is not applied and the "
                f"last finite checkpoint (step {self.ckpt.latest_step()}) is kept; lower optim.lr or check the data")
        self.bar.update(1)
        return metrics

    def launched(self):
        """A step was launched: read the previous one's metrics while it runs, and count it."""
        if self.pending is not None:
            self.read(*self.pending)
        self.pending = None
        self.window_steps += 1

    def log(self, step: int, metrics: dict, evaluate: Optional[Callable[[], dict]]):
        """One row: metrics, ``lr``, throughput since the last row (timed before ``evaluate``'s scalars join)."""
        rate = self.window_steps / (time.perf_counter() - self.window_start)
        scalars = {name: float(value) for name, value in metrics.items()}
        scalars.update(lr=float(self.lr_at(step)), steps_per_sec=rate,
                       images_per_sec=rate * self.config.train.batch_size)
        if evaluate is not None:
            scalars.update(evaluate())
        self.writer.write_scalars(step + 1, scalars)
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_s=f"{rate:.2f}")
        self.window_start, self.window_steps = time.perf_counter(), 0

    def stop_preempted(self, done: int, stop: threading.Event):
        """Wait for the save of ``done``, say how to resume from it, and end the run unfinished."""
        self.ckpt.wait()
        why = "SIGTERM" if stop.is_set() else "a preemption notice"
        stop.clear()      # acted on: not passed on to the previous handler
        if jax.process_index() == 0:
            self.bar.write(f"stopped by {why} at step {done} of {self.total}: checkpoint saved in "
                           f"{self.ckpt.directory / str(done)}; rerun the same command to resume from it")
        raise Preempted(PREEMPTED_STATUS)

    def show_sample(self, done: int, path: Optional[Path]):
        """Name the picture ``on_sample`` wrote (if any) and log it as the image ``samples``."""
        if path is not None:
            self.bar.write(f"step {done}: samples in {path}")
            with Image.open(path) as picture:
                self.writer.write_images(done, {"samples": np.asarray(picture.convert("RGB"))})

    def close(self, stream):
        try:
            stream.close()
            self.bar.close()
            self.writer.close()
        finally:   # last, so that a save that failed in the background is the error the run ends with
            self.ckpt.close()


def run_loop(config, workdir: Path, state, start: int, ckpt: Checkpointer, step_fn, batches: grain.IterDataset,
             mesh, on_sample: Optional[Callable] = None, desc: str = "train", evaluate: Optional[Callable] = None):
    """Steps ``start`` … ``train.num_steps`` on ``batches`` (``training_batches``, continued where
    the checkpoint at ``start`` left the stream), each followed by its ``events_after``, handled by
    ``LoopHost``; with ``optim.grad_accum_steps`` = k a step (an optimizer update) is k calls of
    ``step_fn`` on consecutive micro-batches of its rows, its metrics their means. Log rows
    (metrics.jsonl, TensorBoard) hold those metrics, ``lr``, ``steps_per_sec``, ``images_per_sec``
    and every ``train.eval_every`` steps ``evaluate(state)``'s scalars; the picture
    ``on_sample(step, state)`` writes is logged as the image ``samples``.

    A step's metrics are read on the host while the next step runs, so the device need not wait
    (benchmarks/RESULTS.md), except on steps that log, save or sample, which read their own first:
    a non-finite loss or update stops the run unapplied and unsaved. On SIGTERM (``sigterm_flag``)
    or JAX's preemption sync point (``Checkpointer.reached_preemption``) the step is finished,
    read, saved and waited for, and ``Preempted`` ends the run with status 143, not 0, so that a
    scheduler requeues it; rerunning the command resumes bit for bit. At the last step the run
    just finishes, and the signal then goes to the handler that was there before."""
    total, k = config.train.num_steps, config.optim.grad_accum_steps
    events_at = partial(events_after, total=total, log_every=config.train.log_every,
                        checkpoint_every=config.train.checkpoint_every,
                        sample_every=config.train.sample_every if on_sample is not None else 0,
                        eval_every=config.train.eval_every if evaluate is not None else 0)
    host = LoopHost(config, workdir, start, ckpt, desc)
    stream = iter(batches)
    with sigterm_flag() as stop:
        try:
            if start:
                ckpt.restore_data(stream)
            for step in range(start, total):
                state, step_fn, calls = accumulated_step(state, step_fn, next(stream), mesh, k, first=step == start)
                host.launched()
                done = step + 1
                # Every process asks at every step (JAX's agreed preemption step); SIGTERM is this one's.
                events = events_at(done, preemption_requested=ckpt.reached_preemption(done) or stop.is_set())
                if not events.reads_now:
                    host.pending = (step, calls)
                    continue
                metrics = host.read(step, calls)     # this step's own finite check, before any save of it
                if events.log:
                    host.log(step, metrics, partial(evaluate, state) if events.evaluate else None)
                if events.save:
                    ckpt.save(done, state, config=config.to_dict(), data_position=done, data=stream)
                if events.preempt:
                    host.stop_preempted(done, stop)
                if events.sample:
                    host.show_sample(done, on_sample(done, state))
        finally:
            host.close(stream)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, fall_back: bool = False) -> training.TrainState:
    """Train (or resume) the diffusion model described by ``config`` in ``workdir``; returns the final
    state. ``fall_back``: resume from the newest checkpoint that verifies when the latest is corrupt."""
    workdir, mesh = prepare_run(config, workdir)
    if captioning.is_conditioned(config):
        captioning.keep_tokenizer(config, workdir)
    train_split, heldout_split = build.training_data(config)
    space = None
    if config.data.autoencoder:
        config, space, train_split = autoencoder_runs.latent_training_data(config, workdir, train_split, mesh)
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
