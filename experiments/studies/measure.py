"""A study's work: train what its plan needs and is missing, then measure each cell once (every
metric of ``scoring.METRICS``, kept in ``<workdir>/cells/<cell>.json``), each model's NLL (its
checkpoint's ``nll.record``) or seed 004's objective (``diagnostics.sddpm_objective_record``)
and its sample and encode-then-decode pictures."""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from diffusion import parallel, visualize
from diffusion.checkpoint_meta import config_differences
from diffusion.checkpoints import Checkpointer
from diffusion.data import datasets
from experiments import classifier_loop, draw_cache, inference, loop, nll, scoring
from experiments.cascade import chain
from experiments.latent import autoencoder_loop, autoencoder_runs
from experiments.sddpm import diagnostics
from experiments.studies.plan import cell_name, Plan, Training
from experiments.text import captioning, clip_guidance, clip_training
from experiments.unclip import generation


def trained(config, workdir: Path) -> bool:
    """Whether ``workdir``'s last checkpoint is at ``train.num_steps``; a run there made with another
    model or schedule (a study file edited since) is an error, not a reason to reuse its results. A
    latent run's measured ``data.latent_scale`` is its own (``autoencoder_runs.run_latent_scale``)."""
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                        keep_period=config.train.keep_period)
    try:
        step = ckpt.latest_step()
        diffs = []
        if step is not None:
            saved, mine = ckpt.read_meta(step)["config"], config.to_dict()
            if config.data.autoencoder:     # the scale a latent run measured at its start is its own
                mine["data"]["latent_scale"] = autoencoder_runs.run_latent_scale(config.data, saved["data"])
            diffs = config_differences(saved, mine)
    finally:
        ckpt.close()
    if diffs:
        raise ValueError(f"{workdir} holds a run made with a different model or schedule than the study asks for:\n  "
                         + "\n  ".join(diffs) + f"\nuse a new --workdir, or move {workdir} and the study's cells/ "
                         "aside to retrain and remeasure")
    return step == config.train.num_steps


def ensure_trained(job: Training, classifier_weights: Optional[str] = None, inception_weights: Optional[str] = None):
    """Train (or resume) ``job`` unless its last checkpoint is at its last step (and, for a
    classifier, its ``classifier.msgpack`` is written); an autoencoder's rFID uses the feature
    classifier ``classifier_weights`` (default: the embedded MNIST one) or, for data other than
    28×28×1, Inception-v3 (``inception_weights``)."""
    if job.entry_point == "train":
        if not trained(job.config, job.workdir):
            loop.train_and_evaluate(job.config, job.workdir)
    elif job.entry_point == "train_autoencoder":
        if not trained(job.config, job.workdir):
            autoencoder_loop.train_autoencoder(job.config, job.workdir, classifier_weights=classifier_weights,
                                                  inception_weights=inception_weights)
    elif job.entry_point == "train_clip":
        if not trained(job.config, job.workdir) or not (job.workdir / clip_training.REPORT_FILE).exists():
            clip_training.train_clip(job.config, job.workdir)
    elif not trained(job.config, job.workdir) or not (job.workdir / "classifier.msgpack").exists():
        classifier_loop.train_classifier(job.config, job.workdir)


def train(plan: Plan, inception_weights: Optional[str] = None):
    """Everything the plan trains, in ``Plan.trainings``' order."""
    for job in plan.trainings:
        ensure_trained(job, plan.classifier_weights, inception_weights)


@dataclasses.dataclass(frozen=True)
class Measured:
    """What a study measured: a row per cell (its settings and metrics), NLL per model, the held-out
    split's own metrics, the pictures' (file, caption), and what the report says about features and data."""
    results: list[dict]
    nll: dict
    heldout: dict
    pictures: list[tuple[str, str]]
    feature_name: str
    train_images: int
    objective: dict = dataclasses.field(default_factory=dict)   # per model: seed 004's held-out objective
    objective_reference: Optional[dict] = None                   # the same for ε_r = 0 (nothing learned)


def measure(plan: Plan, mesh, *, batch: int, inception_weights=None) -> Measured:
    """Measure the plan's (trained) models: each cell, NLL when the study lists it, pictures when it asks."""
    config = plan.data_config
    ref = scoring.reference_for(config, mesh, plan.workdir / "reference_stats",
                                   classifier_weights=plan.classifier_weights, inception_weights=inception_weights)
    train_split, heldout, feature_name, feature_fn, reference = (ref.train, ref.heldout, ref.feature_name,
                                                                 ref.feature_fn, ref.stats)
    heldout_row = scoring.quality(*scoring.split_features(feature_fn, heldout), reference)
    load_run = functools.cache(lambda m: inference.load_run(plan.model_dir(m)))     # each model's, once
    own_heldout = functools.cache(lambda m: split_for(load_run(m).config, heldout))   # captioned once per model
    scorer = scoring.clip_scorer(plan.clip_dir("score_clip"), mesh) if plan.study.score_clip else None
    results = [measure_cell(plan, load_run, mesh, cell, feature_fn, reference, batch, heldout=heldout,
                            clip_score=scorer) for cell in plan.cells]
    if plan.autoencoders:   # latent diffusion: each row's first stage and throughput (Rombach et al. 2022)
        costs = {m: cost_record(plan, m) for m in {r["model"] for r in results}}   # each model's log read once
        floors = first_stage_floors(plan, mesh, heldout, feature_fn, reference)
        results = [dict(r, **costs[r["model"]], **floors[plan.models[r["model"]].config.data.autoencoder])
                   for r in results]
    nlls = {}
    if "nll" in plan.study.metrics:
        nlls = {m: nll.record(load_run(m), mesh, own_heldout(m), plan.study.nll_examples, plan.model_dir(m) / "eval")
                for m in plan.models}
    objective, reference = {}, None
    if "sddpm" in plan.study.metrics:   # also set on each of the model's rows, where the claims read it
        objective = {m: diagnostics.sddpm_objective_record(load_run(m), mesh, own_heldout(m),
                                                          plan.study.nll_examples, plan.model_dir(m) / "eval")
                     for m in plan.models}
        first = next(iter(plan.models))
        reference = diagnostics.sddpm_objective(load_run(first), mesh, own_heldout(first), plan.study.nll_examples,
                                               identity=True)
        results = [dict(r, sddpm_objective=objective[r["model"]]["nats_per_dim"],
                        sddpm_objective_se=objective[r["model"]]["stderr"],
                        sddpm_objective_identity=reference["nats_per_dim"]) for r in results]
    pictures = [cascade_picture(plan, cell, mesh, batch) for cell in plan.cells if cell.get("picture")]
    if plan.study.reconstruct_steps or plan.study.encode_depths:
        for m in plan.models:
            pictures += model_pictures(plan, load_run(m), m, mesh, own_heldout(m), batch)
    return Measured(results=results, nll=nlls, heldout=heldout_row, pictures=pictures, feature_name=feature_name,
                    train_images=len(train_split), objective=objective, objective_reference=reference)


def split_for(config, split: datasets.Split) -> datasets.Split:
    """``split`` as a model of ``config`` reads it: captioned with its own tokenizer when it reads text
    (``text.captioned``), since a study hands every model one split, whose token ids, if any, another
    model's tokenizer wrote."""
    return captioning.captioned(config, split) if captioning.is_conditioned(config) else split


def cost_record(plan: Plan, model: str) -> dict:
    """What model ``model`` cost and its first stage gives: training images/s (the median logged
    ``steps_per_sec`` × batch), its steps, and the last PSNR and rFID in its autoencoder's
    ``reconstruction.json`` (none for pixel diffusion, f = 1)."""
    config = plan.models[model].config
    log = (plan.model_dir(model) / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(line)["steps_per_sec"] for line in log]
    row = dict(train_steps=config.train.num_steps, train_images_per_s=float(np.median(rates)) * config.train.batch_size)
    if config.data.autoencoder:
        records = json.loads((Path(config.data.autoencoder) / "reconstruction.json").read_text())
        last = records[max(records, key=int)]
        row.update({f"ae_{k}": last[k] for k in ("psnr", "psnr_se", "rfid", "rfid_se") if k in last})
    return row


def first_stage_floors(plan: Plan, mesh, heldout, feature_fn, reference) -> dict:
    """``{data.autoencoder: fields}`` for each of the study's autoencoders (and ``""``, pixels): FID ±
    s.e. of its reconstructions 𝒟(ℰ(x)) (the KL mean; VQ z_e quantised) of the first ``plan.num``
    held-out images as ``ae_fid``, in the cells' own terms (as many images, the samples' features
    and reference, unlike the autoencoder run's rFID against its own originals), a floor under a
    latent model's sample FID; and for every row the same images unreconstructed as
    ``heldout_fid``, the data's own floor at that count (FID is biased upwards at few samples), and
    that count as ``floor_images`` (below ``plan.num`` when the held-out split is smaller: CIFAR-10's
    10,000 test images against 50,000 samples at ``--scale paper``).
    Measured afresh each time (seconds), so they always belong to the autoencoders on disk."""
    images = heldout.head(plan.num).images      # fewer where the held-out split is smaller (floor_images)
    own = scoring.quality(*feature_fn(images), reference)
    data = dict(heldout_fid=own["fid"], heldout_fid_se=own["fid_se"], floor_images=len(images))
    floors = {"": data}
    for job in plan.autoencoders.values():
        autoencoder = autoencoder_runs.load_autoencoder(job.workdir)
        reconstruct = jax.jit(lambda x: (autoencoder.decode(autoencoder.encode(x)),),
                              in_shardings=parallel.data_sharded(mesh))
        shown = datasets.to_uint8(parallel.map_images(reconstruct, mesh)(images)[0])
        row = scoring.quality(*feature_fn(shown), reference)
        floors[str(job.workdir)] = dict(data, ae_fid=row["fid"], ae_fid_se=row["fid_se"])
    return floors


def measure_cell(plan: Plan, load_run, mesh, cell: dict, feature_fn, reference, batch: int, *, heldout,
                 clip_score: Optional[scoring.ClipScorer] = None) -> dict:
    """The cell's row (its settings and every metric of its samples), read from
    ``<workdir>/cells/<cell>.json`` when measured with as many samples, else measured and kept there;
    ``load_run(model)`` is a model's run. A cell drawn for prompts (a text run's, an unCLIP decoder's
    after its ``prior``, CLIP guidance's) draws for the ``heldout`` split's captions, as
    ``experiments.evaluate`` does, and adds their alignment (``scoring.text_alignment``, scored by
    ``clip_score`` when given)."""
    path = plan.workdir / "cells" / f"{cell_name(cell)}.json"
    if path.exists():
        row = json.loads(path.read_text())
        if row["num"] == plan.num:
            return row
    m, prompts = cell["model"], None
    start = time.perf_counter()
    if cell["prior"]:     # unCLIP: the prior's embeddings for the held-out captions, decoded (Ramesh et al. 2022)
        settings = generation.Settings(sampler=cell["sampler"], steps=cell["steps"], eta=cell["eta"],
                                            clip=cell["clip"], num=plan.num, batch=batch, seed=0)
        images, prompts, domain = generation.heldout_samples(
            [plan.model_dir(cell["prior"]), plan.model_dir(m)], [cell["prior_scale"], cell["scale"]], settings, mesh,
            heldout)
    elif cell["cascade"]:   # the final samples of a cascade whose last stage is m (Ho et al. 2021), or its input
        outputs = cascade_outputs(plan, cell, mesh, batch)
        images = chain.upsampled(outputs[-2], outputs[-1].shape[1]) if cell["upsampled_input"] else outputs[-1]
    else:
        run = load_run(m)
        classifier = (inference.load_noisy_classifier(plan.noisy_classifier.workdir, run.schedule)
                      if cell["guidance"] == "classifier" else None)
        guide = clip_guidance.load(plan.clip_dir("guidance_clip"), run) if cell["guidance"] == "clip" else None
        prompts, domain, condition = draw_cache.heldout_condition(run, heldout, plan.num, guide)
        images = draw_cache.samples_for(run, mesh, plan.model_dir(m), cell["sampler"], cell["steps"], cell["eta"],
                                        num=plan.num, batch=batch, seed=0, guide=cell["guidance"], scale=cell["scale"],
                                        classifier_log_prob=classifier, clip_guide=guide, clip=cell["clip"],
                                        condition=condition)
    seconds = time.perf_counter() - start   # with compilation, and a decode for latents (images/s to the user)
    feats, probs = feature_fn(images)
    row = {**cell, **scoring.quality(feats, probs, reference)}
    if prompts is not None:
        row.update(scoring.text_alignment(domain, images, probs, prompts, clip_score))
    if not cell["cascade"]:
        row["sample_images_per_s"] = plan.num / seconds
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, indent=2))
    return row


def cascade_outputs(plan: Plan, cell: dict, mesh, batch: int) -> list[np.ndarray]:
    """Every stage's outputs of a cascade cell (its lower stages ``cell["cascade"]``, then its model),
    drawn once and kept by ``cascade.samples``; the cell's level s and guidance weight serve every stage."""
    settings = chain.Settings(sampler=cell["sampler"], steps=cell["steps"], eta=cell["eta"],
                                aug_levels=(cell["aug_level"],), truncated=cell["truncated"], scales=(cell["scale"],))
    stages = tuple(cell["cascade"]) + (cell["model"],)
    return chain.samples([plan.model_dir(m) for m in stages], mesh, settings, num=plan.num, batch=batch)


def cascade_picture(plan: Plan, cell: dict, mesh, batch: int) -> tuple[str, str]:
    """(file, caption) of a cascade cell's first 8 samples, a row each: every stage's output and the
    next stage's upsampled conditioning (``cascade.side_by_side``; its samples are cached)."""
    stages = tuple(cell["cascade"]) + (cell["model"],)
    outputs = cascade_outputs(plan, cell, mesh, batch)
    path = plan.workdir / f"{cell_name(cell)}_cascade.png"
    if jax.process_index() == 0:
        visualize.save_png(chain.side_by_side(outputs), path, scale=3)
    return path.name, (f"{cell['row']}, {cell['col']}: per row, the output of each stage ({' → '.join(stages)}) and, "
                       "between them, the next stage's conditioning (upsampled)")


def model_pictures(plan: Plan, run, name: str, mesh, heldout, batch: int) -> list[tuple[str, str]]:
    """``pictures`` (or, for a study with ``encode_depths``, ``forward_pictures``) of model ``name``
    with the sampler of its first cell (unguided)."""
    first = next(c for c in plan.cells if c["model"] == name)
    images = draw_cache.samples_for(run, mesh, plan.model_dir(name), first["sampler"], first["steps"], first["eta"],
                                    num=plan.num, batch=batch, seed=0)
    setting = f"{first['sampler'].upper()} {first['steps']}" + (
        f" (η = {first['eta']:g})" if first["sampler"] == "ddim" else "")
    if plan.study.encode_depths:
        return forward_pictures(run, mesh, heldout, name, images, setting, first["sampler"],
                                plan.study.encode_depths, plan.workdir)
    return pictures(run, mesh, heldout, name, images, setting, plan.study.reconstruct_steps, plan.workdir)


def sample_grid(name: str, images: np.ndarray, setting: str, out: Path) -> tuple[str, str]:
    """(file, caption) of a grid of the first 64 samples, drawn with ``setting``."""
    grid = out / f"{name}_samples.png"
    if jax.process_index() == 0:
        visualize.save_png(visualize.image_grid(images[:64]), grid, scale=2)
    return grid.name, f"{name}: 64 samples, {setting}"


def pictures(run, mesh, heldout, name: str, images: np.ndarray, setting: str, steps: int,
             out: Path) -> list[tuple[str, str]]:
    """(file, caption) of a grid of 64 samples drawn with ``setting`` and of 8 held-out images over
    their DDIM encode-then-decode."""
    n = parallel.padded_count(8, mesh)
    first = heldout.head(n)   # only these are read (the split may be lazy)
    x0 = datasets.to_model_range(first.images)
    z, decoded = inference.reconstruct(run, mesh, x0, first.labels, steps)    # on every process
    recon = out / f"{name}_reconstruction.png"
    if jax.process_index() == 0:
        rows = np.concatenate([x0, np.clip(z / 3, -1, 1), np.clip(decoded, -1, 1)])
        visualize.save_png(visualize.image_grid(datasets.to_uint8(rows), ncols=n), recon, scale=2)
    return [sample_grid(name, images, setting, out),
            (recon.name, f"{name}: 8 held-out images (top), their {steps}-step DDIM latents x_T (middle, ÷ 3) and "
                         f"those latents decoded with {steps} DDIM steps (bottom)")]


def forward_pictures(run, mesh, heldout, name: str, images: np.ndarray, setting: str, sampler: str, depths,
                     out: Path) -> list[tuple[str, str]]:
    """(file, caption) of a grid of 64 samples drawn with ``setting`` and of 8 held-out images over
    seed 004's encode-then-decode (``diagnostics.forward_encode_decode``) through each of ``depths``."""
    n = parallel.padded_count(8, mesh)
    first = heldout.head(n)   # only these are read (the split may be lazy)
    x0 = datasets.to_model_range(first.images)
    encoded, decoded = diagnostics.forward_encode_decode(run, mesh, x0, first.labels, depths, sampler)
    recon = out / f"{name}_encode_decode.png"
    if jax.process_index() == 0:
        rows = np.concatenate([x0] + [np.clip(r, -1, 1) for pair in zip(encoded, decoded) for r in pair])
        visualize.save_png(visualize.image_grid(datasets.to_uint8(rows), ncols=n), recon, scale=2)
    depth_text = ", ".join(f"{k} (√ᾱ = {float(run.schedule.sqrt_alphas_cumprod[k - 1]):.3g})" for k in depths)
    return [sample_grid(name, images, setting, out),
            (recon.name, f"{name}: 8 held-out images (top row), then for k = {depth_text} forward steps a row of "
                         f"their encodings x_k ~ q(x_k | x_0) and a row of those decoded by the model's k ancestral "
                         f"{sampler.upper()} steps")]
