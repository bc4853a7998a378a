"""A run's results as ``experiments.evaluate`` reports them: every sampler setting's samples measured
(``scoring.METRICS``, with prompt alignment when drawn for prompts) and the NLL (``nll.records``), each
kept as ``<eval dir>/<name>.json`` with its checkpoint step, and ``results.md``, the table of
everything measured at that step (Ho et al. 2020, Table 1; Nichol & Dhariwal 2021, Tables 1–2)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import jax

from diffusion import parallel, samplers
from experiments import build, draw_cache, inference, nll, scoring


@dataclasses.dataclass(frozen=True)
class Draws:
    """What ``evaluate_run`` draws of every sampler setting: ``num`` samples, ``batch`` at a time, from
    noise ``seed``; under guidance ``guide`` (``inference.GUIDANCE``) of weight ``scale``, by the noisy
    classifier of ``classifier_workdir`` or the noise-aware CLIP of ``clip_run``; on the kept steps
    ``spacing`` (one of ``schedules.SPACING_NAMES``; None: the config's ``sample.spacing``), named in
    each setting's tag. Counts below 1 are refused, naming the flag."""
    num: int
    batch: int
    seed: int = 0
    guide: str = ""
    scale: float = 0.0
    classifier_workdir: Optional[str] = None
    clip_run: Optional[str] = None
    spacing: Optional[str] = None

    def __post_init__(self):
        build.check_flags_at_least(1, num=self.num, batch=self.batch)


@dataclasses.dataclass(frozen=True)
class Measures:
    """What ``evaluate_run`` measures the samples with, and what else: the feature network ``features``
    (``scoring.make_feature_fn``, with its weights) and where its reference statistics are cached
    (None: ``<workdir>/eval/reference_stats``); the NLL by each of ``nll_methods`` (``nll.METHODS``;
    the ODE of a learned-variance model only with ``ode_ignores_learned_variance``) on
    ``nll_examples`` held-out images (0: none); the CLIP score by the CLIP run ``clip_score_run``
    (``scoring.clip_scorer``) of samples drawn for prompts."""
    features: str = "auto"
    classifier_weights: Optional[str] = None
    inception_weights: Optional[str] = None
    stats_dir: Optional[str | Path] = None
    nll_examples: int = 0
    nll_methods: tuple[str, ...] = ("vlb",)
    ode_ignores_learned_variance: bool = False
    clip_score_run: Optional[str] = None

    def __post_init__(self):
        build.check_flags_at_least(0, nll_examples=self.nll_examples)


def evaluate_run(workdir, settings: list[tuple[str, int, float]], draws: Draws, measures: Measures = Measures(), *,
                 step: Optional[int] = None, weights: str = "ema") -> tuple[list, dict]:
    """Rows of every metric (the held-out split first, then each of ``settings``, (sampler, steps,
    η), drawn as ``draws`` says; a latent run's samples decoded to images) and the NLL by each of
    ``measures.nll_methods`` ({method: record}; a latent run's in bits per latent dimension, of its
    scaled held-out latents), also written to ``<workdir>/eval/*.json`` (with the checkpoint's step;
    each NLL measured once per step and count, ``nll.record``); ``<workdir>/eval/results.md`` tables
    everything measured at that step, this call's settings and earlier calls' alike. ``step`` (a
    kept checkpoint's; default the latest) and ``weights`` ("raw": ``TrainState.params`` instead of
    their EMA; ``inference.load_run``) measure another checkpoint: its records go to
    ``<workdir>/eval/step<n>_<weights>/`` (``eval_dir``), leaving the latest EMA's in ``<workdir>/eval/``."""
    run = inference.load_run(workdir, step, weights)
    check_run(run, settings, measures)
    mesh = parallel.make_mesh()
    scorer = scoring.clip_scorer(measures.clip_score_run, mesh) if measures.clip_score_run else None
    out = eval_dir(workdir, None if step is None and weights == "ema" else run.step, weights)
    out.mkdir(parents=True, exist_ok=True)
    ref = scoring.reference_for(run.config, mesh, measures.stats_dir or eval_dir(workdir) / "reference_stats",
                                features=measures.features, classifier_weights=measures.classifier_weights,
                                inception_weights=measures.inception_weights)
    rows = [dict(name=f"held-out split ({len(ref.heldout)} real images)",
                 **scoring.quality(*scoring.split_features(ref.feature_fn, ref.heldout), ref.stats))]
    rows += setting_rows(run, mesh, out, settings, draws, ref, scorer, weights)
    nlls = {}
    if measures.nll_examples > 0:
        nlls = nll.records(run, mesh, ref.heldout, measures.nll_examples, out, measures.nll_methods, draws.seed)
    if jax.process_index() == 0:
        write_results(out, f"# {workdir} at step {run.step}" + (" (raw weights, no EMA)" if weights == "raw" else ""),
                      rows[0], run.step, ref.feature_name)
    return rows, nlls


def check_run(run, settings: list[tuple[str, int, float]], measures: Measures):
    """Refuse, before anything is drawn: a stage drawn only with others (``inference.check_draws_alone``),
    an NLL method the run cannot be measured by (``nll.check_method``) and any setting beyond its T."""
    inference.check_draws_alone(run.config)
    for method in measures.nll_methods if measures.nll_examples > 0 else ():
        nll.check_method(method, run.config, measures.ode_ignores_learned_variance)
    for sampler, steps, _ in settings:   # every setting is checked before any is drawn
        samplers.check_steps(sampler, steps, run.schedule.num_steps, what=f"{sampler}:{steps} steps")


def setting_rows(run, mesh, out: Path, settings: list[tuple[str, int, float]], draws: Draws,
                 ref: scoring.Reference, scorer: Optional[scoring.ClipScorer], weights: str) -> list[dict]:
    """Each setting's row: its samples (``draw_cache.samples_for``, for the held-out captions when the
    run or its guidance reads prompts) measured against ``ref`` with their prompt alignment, each
    written to ``out/<tag>.json`` with the checkpoint's step, its ``weights`` and the features."""
    guides = draw_cache.load_guides(run, draws.guide, draws.classifier_workdir, draws.clip_run)
    prompts, domain, condition = draw_cache.heldout_condition(run, ref.heldout, draws.num, guides["clip_guide"])
    rows = []
    for sampler, steps, eta in settings:
        images = draw_cache.samples_for(run, mesh, out, sampler, steps, eta, num=draws.num, batch=draws.batch,
                                        seed=draws.seed, guide=draws.guide, scale=draws.scale, condition=condition,
                                        spacing=draws.spacing, **guides)
        tag = draw_cache.setting_tag(sampler, steps, eta, draws.guide, draws.scale, spacing=draws.spacing)
        feats, probs = ref.feature_fn(images)
        row = dict(name=tag, sampler=sampler, steps=steps, eta=eta, spacing=draws.spacing or run.config.sample.spacing,
                   guidance=draws.guide, scale=draws.scale, **scoring.quality(feats, probs, ref.stats))
        if prompts is not None:
            row.update(scoring.text_alignment(domain, images, probs, prompts, scorer))
        rows.append(row)
        if jax.process_index() == 0:
            record = dict(row, step=run.step, weights=weights, features=ref.feature_name)
            (out / f"{tag}.json").write_text(json.dumps(record, indent=2))
            print(f"{tag}: {scoring.summary(row, ref.feature_name)}")
    return rows


def write_results(out: Path, title: str, heldout_row: dict, step: int, feature_name: str):
    """``out/results.md`` under ``title``, also printed: the held-out split's row, then every setting and
    NLL measured at checkpoint ``step`` by any invocation (``recorded``)."""
    measured, measured_nlls = recorded(out, step, feature_name)
    table = markdown([heldout_row] + measured, measured_nlls, feature_name)
    (out / "results.md").write_text(f"{title}\n\n" + table)
    print(table)


def nll_line(record: dict) -> str:
    """An NLL record as results.md states it: the bound with its terms, or the ODE likelihood with
    how it was computed."""
    head = f"on {record['num']} held-out images: **{record['bits_per_dim']:.3f} ± {record['stderr']:.3f} bits/dim**"
    if record.get("method", "vlb") == "vlb":
        return (f"NLL (variational bound) {head} (prior {record['prior']:.4f}, decoder L_0 {record['decoder_L0']:.3f}, "
                f"Σ L_t {record['sum_Lt']:.3f})")
    return (f"NLL (probability-flow ODE) {head} (uniform dequantisation, Hutchinson trace, tolerance "
            f"{record['tolerance']:g}, {record['evaluations']:.0f} network evaluations an image; {record['uses']})")


def markdown(rows: list[dict], nlls: list[dict], feature_name: str) -> str:
    """results.md's table: a row per record, a column per metric of ``scoring.METRICS``; then the NLLs."""
    columns = " | ".join(m.column.format(features=feature_name) for m in scoring.METRICS.values())
    lines = [f"| samples | {columns} | N |", "| --- |" + " --- |" * (len(scoring.METRICS) + 1)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(m.cell(r) for m in scoring.METRICS.values()) + f" | {r['num']} |")
    aligned = [r for r in rows if "class_match" in r]   # drawn for held-out captions (text or CLIP-guided)
    if aligned:
        clip = lambda r: f"{r['clip_score']:.2f} ± {r['clip_score_se']:.2f}" if "clip_score" in r else "—"
        lines += ["", "| samples | prompt's class (argmax) | attributes asked for, shown | CLIP score | N |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['name']} | {100 * r['class_match']:.1f}% | "
                  f"{scoring.share_text(r['attribute_accuracy']['all'])} | {clip(r)} | {r['num']} |" for r in aligned]
    if nlls:
        lines += [""] + [nll_line(r) + "  " for r in nlls]
    return "\n".join(lines) + "\n"


def recorded(out: Path, step: int, feature_name: str) -> tuple[list[dict], list[dict]]:
    """The settings (with these features) and the NLLs (bound first) measured at this checkpoint
    step by any invocation, from ``out/*.json``, so ``results.md`` lists every one of them."""
    found = [json.loads(p.read_text()) for p in out.glob("*.json")]
    rows = sorted((r for r in found if "fid" in r and r.get("step") == step and r.get("features") == feature_name),
                  key=lambda r: (r["guidance"], r["scale"], r["sampler"], r["steps"], r["eta"], r["name"]))
    nlls = sorted((r for r in found if "bits_per_dim" in r and r.get("step") == step),
                  key=lambda r: list(nll.METHODS).index(r.get("method", "vlb")))
    return rows, nlls


def eval_dir(workdir, step: Optional[int] = None, weights: str = "ema") -> Path:
    """Where ``evaluate_run`` keeps a checkpoint's samples and records: ``<workdir>/eval`` for the
    latest checkpoint's EMA (``step`` None), ``<workdir>/eval/step<n>_<weights>`` for checkpoint n's
    EMA or raw weights, so that measuring an older checkpoint never overwrites the latest's records."""
    if step is None and weights != "ema":
        raise ValueError(f"{weights!r} weights are kept apart under the checkpoint's step: name the step")
    out = Path(workdir) / "eval"
    return out if step is None else out / f"step{step}_{weights}"
