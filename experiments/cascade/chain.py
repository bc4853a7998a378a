"""A cascade of trained runs (Ho et al. 2021, CDM): a base run, then super-resolution runs, each
conditioned on the output of the one before; its samples, pictures and FID at the final resolution.
Behind ``experiments.sample --cascade`` and ``experiments.evaluate --cascade`` and the cascaded study.

A cascade may start with the word ``heldout`` in place of a base run: the first super-resolution
stage is then conditioned on the held-out split, shrunk to its low resolution by the resize its
training used (``cascade.low_resolution``): the stage measured alone on real inputs, as SR3 and
CDM report their super-resolution models, which separates its error from the base model's."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from tqdm import tqdm

from diffusion import parallel, samplers, visualize
from diffusion.cascade import augmentation
from diffusion.data import datasets
from experiments import build, draw_cache, inference, runs, scoring

HELDOUT = "heldout"     # a cascade's first stage: the held-out images at the next stage's low resolution


@dataclasses.dataclass(frozen=True)
class HeldoutStage:
    """The held-out split as a cascade's first stage: its images at the next stage's low resolution
    (model range, float: what that stage's training conditioned on) and their labels."""
    images: np.ndarray
    labels: np.ndarray
    step: str = HELDOUT


def heldout_stage(config) -> HeldoutStage:
    """``HeldoutStage`` for the super-resolution stage trained with ``config``."""
    _, heldout = build.load_data(config, labels_used=config.model.num_classes > 0)
    low = augmentation.low_resolution(datasets.to_model_range(heldout.images), config.data.low_resolution)
    return HeldoutStage(np.asarray(low, np.float32), heldout.labels)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a cascade is sampled: one sampler for every stage, per super-resolution stage its level s
    (``aug_levels``), truncated or not, and per stage the classifier-free guidance weight (``scales``;
    0 unguided)."""
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    aug_levels: tuple = (0,)
    truncated: bool = False
    scales: tuple = (0.0,)

    @property
    def tag(self) -> str:
        levels = "-".join(map(str, self.aug_levels))
        scales = "-".join(f"{w:g}" for w in self.scales)
        return (draw_cache.setting_tag(self.sampler, self.steps, self.eta)
                + f"_s{levels}{'_truncated' if self.truncated else ''}_w{scales}")


def settings_from_flags(workdirs, aug_level, truncated: Optional[bool], scales, sampler: str, steps: int,
                        eta: float) -> Settings:
    """``--aug_level``, ``--truncated``, ``--scales`` and the sampler flags as ``Settings``; the levels
    default to each super-resolution stage's ``cascade.aug_level``, truncation to any stage's
    ``cascade.truncated``."""
    stages = [runs.load_config(w).cascade for w in workdirs[1:]]
    if aug_level is None:
        levels = tuple(a.aug_level for a in stages)
    else:
        levels = tuple(int(s) if s.lstrip("-").isdigit() else s for s in aug_level)
    truncated = any(a.truncated for a in stages) if truncated is None else truncated
    return Settings(sampler=sampler, steps=steps, eta=eta, aug_levels=levels, truncated=truncated,
                    scales=tuple(float(w) for w in scales))


def per_stage(values, count: int, flag: str) -> tuple:
    """``values`` as one value per stage: a single value is every stage's."""
    values = tuple(values)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ValueError(f"{flag} gives {len(values)} values for {count} stages: give one, or one per stage")
    return values


def check_chain(workdirs, settings: Settings) -> Settings:
    """Refuse a cascade that cannot run, from the runs' saved configs, before any checkpoint is read:
    fewer than two stages, a first stage that is not a base model, a stage whose low resolution or
    channels are not the previous stage's output, latent stages, levels s outside [0, T) or given to
    a stage without Gaussian augmentation, truncation across different schedules. Returns the
    settings with one level per super-resolution stage and one scale per stage."""
    if len(workdirs) < 2:
        raise ValueError(f"--cascade {','.join(map(str, workdirs))}: a cascade is a base run and at least one "
                         "super-resolution run, comma-separated")
    heldout = str(workdirs[0]) == HELDOUT
    if heldout and settings.truncated:
        raise ValueError("--truncated stops a base model's reverse process at s, but this cascade starts with the "
                         f"held-out images ({HELDOUT}), which have none: drop --truncated (they are corrupted to "
                         "z_s ~ q(z_s | z_0), the non-truncated form)")
    if heldout and settings.scales[0]:
        raise ValueError(f"--scales gives the held-out images ({HELDOUT}, the first stage) the guidance weight "
                         f"{settings.scales[0]:g}: give 0 for them, or one weight per super-resolution stage after a 0")
    configs = [None if heldout and k == 0 else runs.load_config(w) for k, w in enumerate(workdirs)]
    for k, (w, c) in enumerate(zip(workdirs, configs)):
        if c is None:
            continue
        if c.data.autoencoder:
            raise ValueError(f"{w} diffuses latents (data.autoencoder); a cascade's stages are pixel runs")
        samplers.check_steps(settings.sampler, settings.steps, c.diffusion.num_steps, what=f"--steps for stage {k} ({w})")
    if configs[0] is not None and configs[0].data.low_resolution:
        raise ValueError(f"{workdirs[0]} is a super-resolution stage (data.low_resolution="
                         f"{configs[0].data.low_resolution}); a cascade starts with a base run: put one first")
    levels = per_stage(settings.aug_levels, len(workdirs) - 1, "--aug_level")
    scales = per_stage(settings.scales, len(workdirs), "--scales")
    for k in range(1, len(workdirs)):
        lower, c, w = configs[k - 1], configs[k], workdirs[k]
        if lower is None:   # the held-out images, shrunk to whatever resolution stage 1 reads
            if not c.data.low_resolution:
                raise ValueError(f"cascade stage 1 ({w}) is not a super-resolution stage (data.low_resolution=0): the "
                                 f"held-out images ({HELDOUT}) condition one; put a super-resolution run after them")
        elif (c.data.low_resolution, c.data.channels) != (made := (lower.data.image_size, lower.data.channels)):
            what = ("is not a super-resolution stage (data.low_resolution=0)" if not c.data.low_resolution else
                    f"is conditioned on {c.data.low_resolution}×{c.data.low_resolution}×{c.data.channels} images")
            raise ValueError(f"cascade stage {k} ({w}) {what}, but stage {k - 1} ({workdirs[k - 1]}) makes "
                             f"{made[0]}×{made[0]}×{made[1]}: order the stages by resolution, each trained with "
                             "data.low_resolution = the previous stage's data.image_size")
        s, T = levels[k - 1], c.diffusion.num_steps
        gaussian = c.cascade.augmentation == "gaussian"
        augmentation.check_level(s, T, f"--aug_level for stage {k} ({w})",
                            trained=tuple(c.cascade.aug_level_range) if gaussian else None)
        if not gaussian and (s or settings.truncated):
            raise ValueError(f"--aug_level={s}{' --truncated' if settings.truncated else ''}: stage {k} ({w}) was "
                             f"trained with cascade.augmentation={c.cascade.augmentation!r}, not told a level s; "
                             "use --aug_level 0 without --truncated for it")
        if settings.truncated and (build.make_schedule(lower).num_steps != T or not np.allclose(
                build.make_schedule(lower).alphas_cumprod, build.make_schedule(c).alphas_cumprod)):
            raise ValueError(f"--truncated stops stage {k - 1} ({workdirs[k - 1]}) at level s of stage {k}'s schedule "
                             f"({c.diffusion.schedule}, T={T}), but it was trained on {lower.diffusion.schedule}, "
                             f"T={lower.diffusion.num_steps}: use the non-truncated form (drop --truncated)")
    return dataclasses.replace(settings, aug_levels=levels, scales=scales)


def load(workdirs, settings: Settings) -> tuple[list, Settings]:
    """(the stages' runs, the settings per stage), after ``check_chain``; a first stage ``heldout``
    is a ``HeldoutStage``."""
    settings = check_chain(workdirs, settings)
    stages = [inference.load_run(w) for w in workdirs[1:]]
    first = heldout_stage(stages[0].config) if str(workdirs[0]) == HELDOUT else inference.load_run(workdirs[0])
    return [first] + stages, settings


def build_draw_fns(stages: list[inference.Run], mesh, settings: Settings) -> list:
    """One compiled draw per stage (``inference.build_draw_fn``): classifier-free guided where its
    scale is non-zero, conditioned on the stage before at its level s, and, when truncated, stopped
    at the next stage's s."""
    fns = []
    for k, run in enumerate(stages):
        last = k == len(stages) - 1
        if isinstance(run, HeldoutStage):
            fns.append(None)
            continue
        fns.append(inference.build_draw_fn(
            run, mesh, sampler=settings.sampler, steps=settings.steps, eta=settings.eta,
            guide="classifier_free" if settings.scales[k] else "",
            stage=inference.CascadeStage(aug_level=settings.aug_levels[k - 1] if k else None,
                                         truncated=settings.truncated,
                                         stop_at=settings.aug_levels[k] if settings.truncated and not last else None)))
    return fns


def draw(stages, fns, mesh, settings: Settings, *, num: int, batch: int, seed: int, label: int = -1,
         first: int = 0) -> list[np.ndarray]:
    """Each stage's outputs for samples ``first`` … ``num − 1``, uint8 (a truncated stage's z_s
    clipped to [−1, 1]), drawn ``batch`` at a time from keys seeded by ``seed``, the batch's
    position and the stage, so a draw continues an earlier one exactly. A ``HeldoutStage`` gives
    its images and labels in order."""
    parallel.check_batch(batch, mesh, what="--batch")
    if isinstance(stages[0], HeldoutStage):
        if label != -1:
            raise ValueError(f"--label {label}: the held-out images ({HELDOUT}) carry their own labels; drop --label")
        if num > len(stages[0].images):
            raise ValueError(f"--num {num}: the held-out split has {len(stages[0].images)} images; ask for at most that")
        labels = stages[0].labels
    else:
        labels = inference.class_labels(stages[-1].config, num, label)
    outs = [[] for _ in stages]
    for start in tqdm(range(first, num, batch), desc="cascade", unit="batch", disable=jax.process_index() != 0):
        n = min(batch, num - start)
        lab = np.resize(labels[start:start + n], batch)
        key = jax.random.fold_in(jax.random.key(seed), start)
        z = None
        for k, (run, fn) in enumerate(zip(stages, fns)):
            if isinstance(run, HeldoutStage):
                z = parallel.pad_to_devices(np.resize(run.images[start:start + n], (batch,) + run.images.shape[1:]), mesh)
            else:
                args = (run.params, jax.random.fold_in(key, k), lab, np.float32(settings.scales[k]))
                z = fn(*args) if k == 0 else fn(*args, z)
            outs[k].append(datasets.to_uint8(np.clip(parallel.gather(z)[:n], -1, 1)))
    return [np.concatenate(o) for o in outs]


def lower_names(workdirs) -> str:
    """The stages below the last, by their directories' names, for the files the last one keeps."""
    return "_".join(re.sub(r"\W+", "_", Path(w).name) for w in workdirs[:-1])


def samples(workdirs, mesh, settings: Settings, *, num: int, batch: int, seed: int = 0) -> list[np.ndarray]:
    """Every stage's ``num`` outputs, kept in ``<last workdir>/eval/cascade_<lower stages>_<tag>_seed<s>_steps<…>.npz``
    (the checkpoints' steps in the name; a larger ``num`` keeps the cached whole batches)."""
    stages, settings = load(workdirs, settings)
    path = (Path(workdirs[-1]) / "eval" / f"cascade_{lower_names(workdirs)}_{settings.tag}_seed{seed}_steps"
            f"{'-'.join(str(r.step) for r in stages)}.npz")

    def draw_from(first: int) -> dict:      # compiled only when the cache lacks samples
        new = draw(stages, build_draw_fns(stages, mesh, settings), mesh, settings, num=num, batch=batch, seed=seed,
                   first=first)
        return {f"stage{k}": o for k, o in enumerate(new)}
    out = draw_cache.cached_draws(path, num, batch, draw_from)
    return [out[f"stage{k}"] for k in range(len(stages))]


def upsampled(lower: np.ndarray, size: int) -> np.ndarray:
    """A stage's uint8 outputs as the next stage is fed them (``cascade.upsample`` to ``size``),
    uint8: the next stage's conditioning, and what bare resizing without that stage gives."""
    return datasets.to_uint8(np.clip(np.asarray(augmentation.upsample(datasets.to_model_range(lower), size)), -1, 1))


def side_by_side(outputs: list[np.ndarray], rows: int = 8) -> np.ndarray:
    """``rows`` samples, one a row: each stage's output upsampled (nearest) to the final size, and
    between stages the next stage's conditioning (``upsampled``)."""
    size = outputs[-1].shape[1]
    columns = []
    for k, o in enumerate(outputs[:-1]):
        columns.append(np.repeat(np.repeat(o[:rows], size // o.shape[1], 1), size // o.shape[2], 2))
        columns.append(upsampled(o[:rows], outputs[k + 1].shape[1]))
    columns.append(outputs[-1][:rows])
    return visualize.image_grid(np.stack(columns, axis=1).reshape((-1,) + columns[0].shape[1:]), ncols=len(columns))


def write(out: Path, tag: str, outputs: list[np.ndarray]):
    """``<tag>_cascade.png`` (``side_by_side``), a grid of each stage's outputs ``<tag>_stage<k>.png``
    and ``<tag>.npz`` (every stage's uint8 outputs)."""
    if jax.process_index() != 0:
        return
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"{tag}.npz", **{f"stage{k}": o for k, o in enumerate(outputs)})
    for k, o in enumerate(outputs):
        visualize.save_png(visualize.image_grid(o), out / f"{tag}_stage{k}.png", scale=2)
    print(f"wrote {visualize.save_png(side_by_side(outputs), out / f'{tag}_cascade.png', scale=2)}, "
          f"{tag}_stage*.png and {tag}.npz in {out}")


def evaluate(workdirs, settings: Settings, *, num: int, batch: int, seed: int = 0, features: str = "auto",
             classifier_weights: Optional[str] = None, inception_weights: Optional[str] = None,
             stats_dir=None) -> dict:
    """Every metric of ``scoring.METRICS`` (FID first) of the cascade's final samples against the
    last stage's training split at the final resolution, and under ``upsampled_input`` the same of
    the last stage's input resized alone (``upsampled``: what that stage adds), written to
    ``<last workdir>/eval/cascade_<lower stages>_<tag>.json``."""
    build.check_flags_at_least(1, num=num, batch=batch)
    settings = check_chain(workdirs, settings)
    mesh = parallel.make_mesh()
    config = runs.load_config(workdirs[-1])
    out = Path(workdirs[-1]) / "eval"
    ref = scoring.reference_for(config, mesh, stats_dir or out / "reference_stats", features=features,
                                   classifier_weights=classifier_weights, inception_weights=inception_weights)
    feature_name, feature_fn, reference = ref.feature_name, ref.feature_fn, ref.stats
    outputs = samples(workdirs, mesh, settings, num=num, batch=batch, seed=seed)
    bare = scoring.quality(*feature_fn(upsampled(outputs[-2], outputs[-1].shape[1])), reference)
    record = dict(scoring.quality(*feature_fn(outputs[-1]), reference), stages=[str(w) for w in workdirs],
                  features=feature_name, upsampled_input=bare, **dataclasses.asdict(settings))
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"cascade_{lower_names(workdirs)}_{settings.tag}.json").write_text(json.dumps(record, indent=2))
        print(f"cascade {settings.tag}: {scoring.summary(record, feature_name)}\n"
              f"  its last stage's input upsampled alone: {scoring.summary(bare, feature_name)}")
    return record

