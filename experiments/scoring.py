"""Sample quality as papers measure it, composed from the library: feature networks (the project's
classifier at 28×28, else Inception-v3 pool3 as FID's authors use, Heusel et al. 2017), the training
split's cached reference statistics, the metrics of a sample set (``METRICS``: FID, IS, confidence)
and, for samples drawn for prompts, their alignment (``PROMPT_METRICS``: GLIDE §4, Imagen §4.1);
used by ``experiments.results``, the cascade, unCLIP and the studies."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np

from diffusion import metrics, parallel
from diffusion.data import datasets
from diffusion.models import classifier as classifier_lib, inception
from diffusion.text import captions, contrastive
from experiments import build, nll
from experiments.text import captioning, clip_runs

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]   # uint8 images -> (features, probabilities)


def classifier_features(mesh, weights=None) -> FeatureFn:
    """The project's 28×28 classifier: 128-d penultimate features and class probabilities."""
    if weights:
        model = classifier_lib.ImageClassifier()
        params = classifier_lib.load_classifier_params(model, weights)
    else:
        model, params = classifier_lib.embedded_mnist_classifier()

    def fn(x):
        logits, feats = model.apply({"params": params}, x)
        return feats, jax.nn.softmax(logits)
    return parallel.map_images(jax.jit(fn, in_shardings=parallel.data_sharded(mesh)), mesh)


def inception_features(mesh, weights) -> FeatureFn:
    """Inception-v3 pool3 (2048-d) features and its 1008-way probabilities at 299×299."""
    if not weights:
        raise ValueError("--features inception needs --inception_weights: pytorch-fid's "
                         "pt_inception-2015-12-05-6726825d.pth, downloaded where the internet is reachable")
    model, params = inception.load_fid_inception(weights)

    def fn(x):
        pool, logits = model.apply({"params": params}, inception.resize_for_inception(x))
        return pool, jax.nn.softmax(logits)
    return parallel.map_images(jax.jit(fn, in_shardings=parallel.data_sharded(mesh)), mesh, batch=100)


def uses_inception(config) -> bool:
    """Whether ``config``'s data is measured with Inception-v3 features (all but 28×28×1 images)."""
    return (config.data.image_size, config.data.channels) != (28, 1)


def make_feature_fn(config, mesh, kind: str, classifier_weights=None, inception_weights=None) -> tuple[str, FeatureFn]:
    if kind == "auto":
        kind = "inception" if uses_inception(config) else "classifier"
    if kind == "classifier":
        if uses_inception(config):
            raise ValueError("the classifier features are for 28×28 single-channel data; use --features inception")
        name = "classifier-" + (re.sub(r"\W+", "_", str(classifier_weights)) if classifier_weights else "mnist")
        return name, classifier_features(mesh, classifier_weights)
    return "inception", inception_features(mesh, inception_weights)


FEATURE_CHUNK = 2048   # examples of a split read (and measured) at a time: its images are never all in memory


def feature_chunks(feature_fn: FeatureFn, split, chunk: int = FEATURE_CHUNK):
    """(features, class probabilities) of ``split``'s examples ``chunk`` at a time, in order, each
    chunk's images read through ``split.rows`` (a ``datasets.Split`` or a lazy ``datasets.RecordSplit``),
    so that only one chunk of images is in memory at once."""
    for start in range(0, len(split), chunk):
        yield feature_fn(split.rows(start, start + chunk).images)


def split_features(feature_fn: FeatureFn, split, chunk: int = FEATURE_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D], class probabilities [N, K]) of every example of ``split``, its images read
    ``chunk`` at a time (``feature_chunks``): for a split whose features, not images, fit in memory."""
    feats, probs = zip(*feature_chunks(feature_fn, split, chunk))
    return np.concatenate(feats), np.concatenate(probs)


def reference_stats(config, feature_name: str, feature_fn: FeatureFn, split_name: str, split, stats_dir: Path,
                    chunk: int = FEATURE_CHUNK):
    """Feature statistics of a data split and its class probabilities [N, K], cached per dataset,
    size, split and feature network; measured ``chunk`` examples at a time (``feature_chunks``), each
    chunk's features added to the running sums of ``metrics.FeatureStats`` and then dropped, so
    neither the split's images nor its features are ever in memory whole."""
    key = re.sub(r"\W+", "_", f"{config.data.source}_{config.data.image_size}_seed{config.seed}_"
                             f"hold{config.data.holdout_fraction:g}_{split_name}_{feature_name}")
    path = stats_dir / f"{key}.npz"
    if path.exists():
        return metrics.FeatureStats.load(path), np.load(stats_dir / f"{key}_probs.npy")
    stats, probs = None, []
    for feats, chunk_probs in feature_chunks(feature_fn, split, chunk):
        stats = (metrics.FeatureStats(feats.shape[1]) if stats is None else stats).update(feats)
        probs.append(chunk_probs)
    probs = np.concatenate(probs)
    stats_dir.mkdir(parents=True, exist_ok=True)
    stats.save(path)
    np.save(stats_dir / f"{key}_probs.npy", probs)
    return stats, probs


@dataclasses.dataclass(frozen=True)
class Reference:
    """What a run's samples are measured against: its data's splits (a TFDS set's read lazily), the
    feature network and the training split's feature statistics (``reference_stats``)."""
    train: datasets.Split
    heldout: datasets.Split
    feature_name: str
    feature_fn: FeatureFn
    stats: metrics.FeatureStats


def reference_for(config, mesh, stats_dir, *, features: str = "auto", classifier_weights=None,
                  inception_weights=None) -> Reference:
    """The ``Reference`` of ``config``'s data with the feature network ``features``
    (``make_feature_fn``), its statistics cached in ``stats_dir``."""
    train_split, heldout = build.training_data(config)
    feature_name, feature_fn = make_feature_fn(config, mesh, features, classifier_weights, inception_weights)
    stats, _ = reference_stats(config, feature_name, feature_fn, "train", train_split, Path(stats_dir))
    return Reference(train_split, heldout, feature_name, feature_fn, stats)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A sample-quality metric: its fields of a measured record, and how each table prints them."""
    compute: Callable[[np.ndarray, np.ndarray, metrics.FeatureStats], dict]   # (features, probs, reference) -> fields
    column: str                     # its column in results.md; {features} is the feature network's name
    cell: Callable[[dict], str]     # a record's entry in results.md
    entry: Callable[[dict], str]    # a record's entry in a study's report.md, where metrics share a table cell
    legend: str                     # what a report.md entry means


# Every metric that results.md tables and a study may list in its ``metrics``, in table order.
METRICS = {
    "fid": Metric(
        compute=lambda feats, probs, ref: {
            "fid": metrics.fid_from_stats(metrics.FeatureStats(feats.shape[1]).update(feats), ref),
            "fid_se": metrics.fid_standard_error(feats, ref)},
        column="FID ({features}, ± jackknife s.e.)", cell=metrics.fid_text, entry=metrics.fid_text,
        legend="FID ↓ ± its jackknife standard error over the cell's samples"),
    "is": Metric(
        compute=lambda feats, probs, ref: dict(zip(("is_mean", "is_std"), metrics.inception_score(probs))),
        column="IS", cell=lambda r: f"{r['is_mean']:.2f} ± {r['is_std']:.2f}",
        entry=lambda r: f"IS {r['is_mean']:.2f} ± {r['is_std']:.2f}", legend="Inception Score ↑"),
    "confident": Metric(
        compute=lambda feats, probs, ref: {"confident_0.9": metrics.confident_fraction(probs, 0.9)},
        column="≥ 0.9 confident", cell=lambda r: f"{100 * r['confident_0.9']:.1f}%",
        entry=lambda r: f"{100 * r['confident_0.9']:.0f}% ≥ 0.9",
        legend="share of samples classified with confidence ≥ 0.9"),
}


@dataclasses.dataclass(frozen=True)
class PromptMetric:
    """A metric of samples drawn for prompts, against those prompts (``text_alignment`` measures them
    all): its entry in a study's report.md and what that entry means."""
    entry: Callable[[dict], str]
    legend: str


# The prompt-alignment metrics a study may list in its ``metrics`` beside ``METRICS`` (GLIDE §4,
# Imagen §4.1, unCLIP §5): measured on every cell drawn for prompts (a text run's, unCLIP's, CLIP guidance's).
PROMPT_METRICS = {
    "class_match": PromptMetric(entry=lambda r: f"class {100 * r['class_match']:.1f}%",
                                legend="class match ↑ (the share whose class, by the feature classifier's argmax, is "
                                       "the prompt's)"),
    "attribute_accuracy": PromptMetric(entry=lambda r: f"attributes {share_text(r['attribute_accuracy']['all'])}",
                                       legend="attribute accuracy ↑ (the share of the attributes a prompt asks for "
                                              "that its sample shows)"),
    "clip_score": PromptMetric(entry=lambda r: f"CLIP {r['clip_score']:.1f} ± {r['clip_score_se']:.1f}",
                               legend="CLIP score ↑ (100 · cosine of the project's CLIP's image and prompt embeddings) "
                                      "± its s.e."),
}


def quality(feats, probs, reference: metrics.FeatureStats) -> dict:
    """Every metric of ``METRICS`` for one sample set (features [N, D], class probabilities [N, K])
    against the reference statistics, and the set's size ``num``."""
    record = {}
    for metric in METRICS.values():
        record.update(metric.compute(feats, probs, reference))
    return dict(record, num=int(len(feats)))


def summary(row: dict, feature_name: str) -> str:
    """One line of a row's metrics (``METRICS``), then its prompt alignment and CLIP score where measured."""
    return ", ".join([f"{m.column.format(features=feature_name)} {m.cell(row)}" for m in METRICS.values()]
                     + [m.entry(row) for name, m in PROMPT_METRICS.items() if name in row])


def share_text(value) -> str:
    """A share as results.md and report.md print it: ``0.123`` → ``12.3%``; None (nothing to share) → —."""
    return "—" if value is None else f"{100 * value:.1f}%"


ClipScorer = Callable[[np.ndarray, list], np.ndarray]   # (uint8 images [N, ...], prompts [N]) -> CLIP scores [N]


def clip_scorer(clip_run, mesh) -> ClipScorer:
    """The CLIP score of each sample against its prompt (``contrastive.clip_score``, 100 · cosine) by the
    CLIP run ``clip_run``, refused before any work when it is not a CLIP of clean images (a noised
    CLIP reads x_t and t: GLIDE scores with a clean one) or, at scoring, for prompts outside its
    vocabulary or context."""
    name = f"--clip_score_run={clip_run}"
    config = clip_runs.check_run(clip_run, name)
    if config.clip.noise_aware:
        raise ValueError(f"{name} is a noise-aware CLIP (its image tower reads x_t and t): the CLIP score compares "
                         "finished samples with their prompts; give a CLIP of clean images (configs/text/clip_mnist.py)")
    model, params, tokenizer, _ = clip_runs.load_clip(clip_run)

    def score(images: np.ndarray, prompts: list) -> np.ndarray:
        tokens = captioning.check_prompts(tokenizer, prompts, f"the CLIP {clip_run}")
        return np.asarray(contrastive.clip_score(clip_runs.embed_images(model, params, images, mesh),
                                                 clip_runs.embed_texts(model, params, tokens, mesh)))
    return score


def text_alignment(domain: str, images: np.ndarray, probs: np.ndarray, prompts: list[str],
                   clip_score: Optional[ClipScorer] = None) -> dict:
    """How well samples follow their prompts: ``class_match``, the share the feature classifier
    assigns (argmax) to the class the prompt names (``captions.prompt_class``), and
    ``attribute_accuracy``, the share showing each attribute the prompt asks for, measured as the
    captions are (``captions.attribute_accuracy``; NaN, written null, for one no prompt asks for);
    with ``clip_score`` (``clip_scorer``), also the mean CLIP score and its standard error."""
    named = np.asarray([captions.prompt_class(domain, p) for p in prompts])
    accuracy = captions.attribute_accuracy(domain, images, prompts)
    record = {"class_match": float(np.mean(np.argmax(probs, -1) == named)),
              "attribute_accuracy": {k: (None if np.isnan(v) else v) for k, v in accuracy.items()}}
    if clip_score is not None:
        scores = nll.mean_and_stderr(clip_score(images, list(prompts)), "clip_score")
        record.update(clip_score=scores["clip_score"], clip_score_se=scores["stderr"])
    return record
