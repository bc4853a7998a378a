"""Evaluation as papers do it, composed from the library: feature networks, cached reference
statistics, the sample-quality metrics of sampler settings (``METRICS``: FID, IS, confidence), and
NLL in bits/dim kept once per checkpoint; used by ``experiments.evaluate`` and the studies."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from diffusion import likelihood, metrics, parallel, samplers
from diffusion.sddpm import process
from diffusion.data import datasets
from diffusion.models import classifier as classifier_lib, inception
from diffusion.text import captions, contrastive
from experiments import build, inference
from experiments.text import captioning, clip_guidance, clip_runs

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
    "attribute_accuracy": PromptMetric(entry=lambda r: f"attributes {_share(r['attribute_accuracy']['all'])}",
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


def parse_setting(text: str) -> tuple[str, int, float]:
    """'ddim:50:0.5' → ('ddim', 50, 0.5); a malformed setting is a ValueError saying the form."""
    form = f"sampler setting {text!r} is not name:steps[:eta] with name {'|'.join(samplers.SAMPLERS)}, " \
           "steps an integer >= 1 and eta a number"
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in samplers.SAMPLERS or not re.fullmatch(r"\d+", parts[1]):
        raise ValueError(form)
    try:
        eta = float(parts[2]) if len(parts) == 3 else 0.0
    except ValueError:
        raise ValueError(form) from None
    if int(parts[1]) < 1 or not np.isfinite(eta) or eta < 0:
        raise ValueError(form)
    if len(parts) == 3 and not samplers.takes(parts[0], "eta"):
        raise ValueError(f"sampler setting {text!r}: {parts[0]} has no η; write {parts[0]}:{parts[1]}")
    return parts[0], int(parts[1]), eta


def setting_tag(sampler: str, steps: int, eta: float, guide: str = "", scale: float = 0.0,
                clip: Optional[str] = None, spacing: Optional[str] = None) -> str:
    """A setting's name in file names and tables: ``ddim50_eta0``, ``euler_ancestral50_trailing``; a
    clip or spacing given (None: the run's own) is named, so their samples are cached apart."""
    tag = f"{sampler}{steps}" + (f"_{spacing}" if spacing else "") + (f"_eta{eta:g}" if sampler == "ddim" else "")
    return tag + (f"_{guide}{scale:g}" if guide else "") + (f"_clip{clip or 'none'}" if clip is not None else "")


def samples_for(run, mesh, out: Path, sampler: str, steps: int, eta: float, *, num: int, batch: int, seed: int,
                guide: str = "", scale: float = 0.0, classifier_log_prob=None, clip_guide=None,
                clip: Optional[str] = None, condition=None, spacing: Optional[str] = None) -> np.ndarray:
    """``num`` samples of one setting from the run's checkpoint, drawn once and kept in
    ``out/samples_<tag>_seed<seed>_step<step>.npz`` (``cached_draws``); ``clip`` and ``spacing``
    (None: the config's) threshold x̂_0 and choose the kept steps; ``condition``: each sample's (a
    text run's prompts as token ids, ``heldout_prompts``; CLIP guidance's dict,
    ``clip_guidance.prompt_condition``)."""
    tag = setting_tag(sampler, steps, eta, guide, scale, clip, spacing)

    def draw_from(first: int) -> dict:
        draw = inference.build_draw_fn(run, mesh, sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                                      clip=run.config.sample.clip if clip is None else clip,
                                      guide=guide, classifier_log_prob=classifier_log_prob, clip_guide=clip_guide)
        return {"image": inference.draw_samples(run, draw, mesh, num=num, batch=batch, seed=seed, scale=scale,
                                               desc=tag, first=first, condition=condition)}
    return cached_draws(out / f"samples_{tag}_seed{seed}_step{run.step}.npz", num, batch, draw_from)["image"]


def heldout_prompts(run, heldout: datasets.Split, num: int, domain: str = "") -> list[str]:
    """``num`` prompts for a run's samples: the held-out images' captions in turn, phrased in
    ``domain`` (default: the run's own) with the run's seed as its training captions are
    (``captions.captions``), so prompts follow the data's classes and attributes. Built from the
    images and labels, never decoded from a split's token ids (another run's tokenizer may have
    written those), so every run given the same split and seed is drawn for the same prompts. Only
    the first ``num`` held-out examples are read (``heldout.head``; the split may be lazy)."""
    first = heldout.head(num)   # the prompts of the first ``num``: the same as of the whole split's captions
    texts = captions.captions(domain or run.config.data.captions, first.images, first.labels, seed=run.config.seed)
    return [texts[i % len(texts)] for i in range(num)]


def heldout_condition(run, heldout: datasets.Split, num: int, guide=None) -> tuple[Optional[list[str]], str, object]:
    """(prompts, their caption domain, each sample's condition) of ``num`` samples of the run drawn
    for the held-out captions (``heldout_prompts``): for a text run, or any run under CLIP guidance
    ``guide`` (``clip_guidance.prompt_condition``); (None, its captions, None) for a run drawn without prompts."""
    domain = guide.domain if guide else run.config.data.captions
    if run.tokenizer is None and guide is None:
        return None, domain, None
    prompts = heldout_prompts(run, heldout, num, domain)
    return prompts, domain, clip_guidance.prompt_condition(run, guide, prompts)


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
        scores = mean_and_stderr(clip_score(images, list(prompts)), "clip_score")
        record.update(clip_score=scores["clip_score"], clip_score_se=scores["stderr"])
    return record


def cached_draws(path: Path, num: int, batch: int, draw_from: Callable[[int], dict]) -> dict:
    """The first ``num`` rows of each array kept in ``path`` (an .npz of equally long arrays), drawing
    only what is missing: the cached whole batches are kept and ``draw_from(first)`` gives every
    array's rows ``first`` … ``num − 1`` (draws seeded by batch position continue exactly); the
    result is written back by process 0."""
    kept, have = {}, 0
    if path.exists():
        with np.load(path) as f:
            kept = {name: f[name] for name in f.files}
        have = len(next(iter(kept.values())))
        if have >= num:
            return {name: a[:num] for name, a in kept.items()}
        have = have // batch * batch
        kept = {name: a[:have] for name, a in kept.items()}
    new = draw_from(have)
    out = {name: np.concatenate([kept[name], a]) if kept else a for name, a in new.items()}
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    return out


def over_heldout(fn, run, mesh, heldout, num: int, batch: int, seed: int, desc: str) -> dict:
    """``fn(params, x, condition, key) -> {name: [B, ...]}`` over the first ``num`` held-out images and
    their conditions (``build.condition_of``: labels, or a text run's captions as token ids) in
    padded, device-sharded batches (a fresh key per batch), concatenated on the host. Only those
    ``num`` examples are read (``heldout.head``; the split may be lazy)."""
    heldout = heldout.head(num)
    condition = build.condition_of(run.config, heldout)
    batch = parallel.padded_count(batch, mesh)
    dat = parallel.data_sharded(mesh)
    fn = jax.jit(fn, in_shardings=(parallel.replicated(mesh), dat, dat, parallel.replicated(mesh)))
    outs = []
    num = len(heldout)
    for i in tqdm(range(0, num, batch), desc=desc, unit="batch", disable=jax.process_index() != 0):
        x = datasets.to_model_range(heldout.images[i:min(i + batch, num)])
        rows = condition[i:min(i + batch, num)]
        out = fn(run.params, parallel.pad_to_devices(x, mesh), parallel.pad_to_devices(rows, mesh),
                 jax.random.key(seed + i))
        outs.append(jax.tree.map(lambda a: parallel.gather(a)[:len(x)], out))
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def mean_and_stderr(per_image: np.ndarray, unit: str = "bits_per_dim") -> dict:
    """``{unit: mean, "stderr": standard error of the mean, "num": count}`` of per-image values."""
    return {unit: float(per_image.mean()), "stderr": float(per_image.std(ddof=1) / np.sqrt(len(per_image))),
            "num": int(len(per_image))}


def has_bound(config) -> bool:
    """Whether the run's model has the variational bound ``bound_fn`` measures: a U-Net with a
    Gaussian reverse process (not the SDDPM's residual), not conditioned on a low-resolution image."""
    return (config.model.kind == "unet" and config.diffusion.prediction != process.RESIDUAL
            and not config.data.low_resolution)


def bound_fn(config, model, schedule) -> Callable:
    """``fn(params, x, labels, key)``: ``likelihood.variational_bound`` (bits/dim) of the model ``config``
    describes, every step's noise drawn from ``key``."""
    def bound(params, x, labels, key):
        return likelihood.variational_bound(build.make_denoiser(model, params), schedule, x, key,
                                            decoder=config.diffusion.decoder,
                                            cond=build.conditioning(config, labels), **build.output_kwargs(config))
    return bound


def nll_bits_per_dim(run, mesh, heldout, num: int, batch: int = 32, seed: int = 0) -> dict:
    """Mean and standard error of the variational bound (bits/dim) on ``num`` held-out images,
    with the mean of each term (prior, decoder L_0, Σ L_t) and, per step t = 1 … T, the mean term
    ``per_step_bpd`` (index 0 is L_0) and ‖ε − ε̂‖² ``per_step_eps_mse`` (Nichol & Dhariwal 2021, Fig. 2)."""
    out = over_heldout(bound_fn(run.config, run.model, run.schedule), run, mesh, heldout, num, batch, seed, "nll")
    per_step = out["terms"].mean(0)
    return dict(mean_and_stderr(out["total"]), method="vlb", prior=float(out["prior"].mean()),
                decoder_L0=float(per_step[0]), sum_Lt=float(per_step[1:].sum()),
                per_step_bpd=per_step.tolist(), per_step_eps_mse=out["mse"].mean(0).tolist())


ODE_TOLERANCE = 1e-5     # rtol = atol of the adaptive solver (Song et al. 2021 use 1e-5)


def ode_nll_bits_per_dim(run, mesh, heldout, num: int, batch: int = 32, seed: int = 0,
                         tolerance: float = ODE_TOLERANCE) -> dict:
    """Mean and standard error of the probability-flow ODE's NLL (``likelihood.probability_flow_nll``:
    Hutchinson's trace, uniform dequantisation of the 8-bit images) on ``num`` held-out images, and
    the mean network evaluations per image the adaptive solver took."""
    config = run.config
    if config.diffusion.decoder != "discretized":
        raise ValueError(f"the ODE likelihood dequantises 8-bit images; diffusion.decoder={config.diffusion.decoder!r} "
                         "marks continuous data, whose density it does not report in bits of an image")

    def ode(params, x, labels, key):
        out = likelihood.probability_flow_nll(build.make_denoiser(run.model, params), run.schedule, x, key,
                                              cond=build.conditioning(config, labels), rtol=tolerance,
                                              atol=tolerance, **build.output_kwargs(config))
        return {"bpd": out["bits_per_dim"], "evaluations": jnp.broadcast_to(out["evaluations"], (x.shape[0],))}
    out = over_heldout(ode, run, mesh, heldout, num, batch, seed, "ode nll")
    return dict(mean_and_stderr(out["bpd"]), method="ode", tolerance=tolerance,
                evaluations=float(out["evaluations"].mean()), trace="hutchinson", dequantised="uniform",
                uses="the ε̂ channels" + (" (not the learned variance)"
                                          if config.diffusion.variance.startswith("learned") else ""))


NLL_METHODS = {"vlb": ("nll.json", nll_bits_per_dim), "ode": ("nll_ode.json", ode_nll_bits_per_dim)}


def check_nll_method(method: str, config, ode_ignores_learned_variance: bool = False):
    """Refuse an NLL method that does not exist, or, unless told to ignore it, the ODE likelihood
    of a learned-variance model."""
    if method not in NLL_METHODS:
        raise ValueError(f"unknown NLL method {method!r}; choose from {sorted(NLL_METHODS)}")
    if method == "ode" and config.diffusion.variance.startswith("learned") and not ode_ignores_learned_variance:
        raise ValueError(
            f"--nll ode on a model with diffusion.variance={config.diffusion.variance!r}: the probability-flow ODE "
            "uses only the ε̂ channels, not the reverse variance Σ_θ this model learned and its variational bound "
            "uses, so the two NLLs would describe different models; measure --nll vlb, or pass "
            "--ode_ignores_learned_variance to take the ODE of the ε̂ channels anyway")


def nll_record(run, mesh, heldout, num: int, out: Path, seed: int = 0, method: str = "vlb") -> dict:
    """The NLL by ``method`` (``NLL_METHODS``: "vlb" the variational bound, "ode" the probability-flow
    likelihood) of the run's checkpoint on ``num`` held-out images with its ``step``, one record per
    checkpoint and method in ``out/nll.json`` or ``out/nll_ode.json``: read back when it is of this
    step and count (and, for the bound, has the per-step terms), measured and written otherwise. The
    noise ``seed`` is not matched: it moves the estimate within its standard error, not what is measured."""
    filename, measure_nll = NLL_METHODS[method]
    return checkpoint_record(Path(out) / filename, run, min(num, len(heldout)),
                             lambda: measure_nll(run, mesh, heldout, num, seed=seed),
                             complete=lambda record: "per_step_bpd" in record or method != "vlb")


def checkpoint_record(path: Path, run, num: int, measure: Callable[[], dict],
                      complete: Callable[[dict], bool] = lambda record: True) -> dict:
    """The record at ``path`` when it is of the run's checkpoint step and ``num`` images (and
    ``complete``), else ``measure()`` with the ``step``, written there: one record per checkpoint."""
    if path.exists():
        record = json.loads(path.read_text())
        if record.get("step") == run.step and record.get("num") == num and complete(record):
            return record
    record = dict(measure(), step=run.step)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
    return record


def nll_line(record: dict) -> str:
    """An NLL record as results.md states it: the bound with its terms, or the ODE likelihood with
    how it was computed."""
    head = f"on {record['num']} held-out images: **{record['bits_per_dim']:.3f} ± {record['stderr']:.3f} bits/dim**"
    if record.get("method", "vlb") == "vlb":
        return (f"NLL (variational bound) {head} (prior {record['prior']:.4f}, decoder L_0 {record['decoder_L0']:.3f}, "
                f"Σ L_t {record['sum_Lt']:.3f})")
    return (f"NLL (probability-flow ODE) {head} (uniform dequantisation, Hutchinson trace, tolerance "
            f"{record['tolerance']:g}, {record['evaluations']:.0f} network evaluations an image; {record['uses']})")


def _share(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


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


def summary(row: dict, feature_name: str) -> str:
    """One line of a row's metrics (``METRICS``), then its prompt alignment and CLIP score where measured."""
    return ", ".join([f"{m.column.format(features=feature_name)} {m.cell(row)}" for m in METRICS.values()]
                     + [m.entry(row) for name, m in PROMPT_METRICS.items() if name in row])


def markdown(rows: list[dict], nlls: list[dict], feature_name: str) -> str:
    """results.md's table: a row per record, a column per metric of ``METRICS``; then the NLLs."""
    columns = " | ".join(m.column.format(features=feature_name) for m in METRICS.values())
    lines = [f"| samples | {columns} | N |", "| --- |" + " --- |" * (len(METRICS) + 1)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(m.cell(r) for m in METRICS.values()) + f" | {r['num']} |")
    aligned = [r for r in rows if "class_match" in r]   # drawn for held-out captions (text or CLIP-guided)
    if aligned:
        clip = lambda r: f"{r['clip_score']:.2f} ± {r['clip_score_se']:.2f}" if "clip_score" in r else "—"
        lines += ["", "| samples | prompt's class (argmax) | attributes asked for, shown | CLIP score | N |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['name']} | {100 * r['class_match']:.1f}% | {_share(r['attribute_accuracy']['all'])} | "
                  f"{clip(r)} | {r['num']} |" for r in aligned]
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
                  key=lambda r: list(NLL_METHODS).index(r.get("method", "vlb")))
    return rows, nlls


def eval_dir(workdir, step: Optional[int] = None, weights: str = "ema") -> Path:
    """Where ``evaluate_run`` keeps a checkpoint's samples and records: ``<workdir>/eval`` for the
    latest checkpoint's EMA (``step`` None), ``<workdir>/eval/step<n>_<weights>`` for checkpoint n's
    EMA or raw weights, so that measuring an older checkpoint never overwrites the latest's records."""
    if step is None and weights != "ema":
        raise ValueError(f"{weights!r} weights are kept apart under the checkpoint's step: name the step")
    out = Path(workdir) / "eval"
    return out if step is None else out / f"step{step}_{weights}"


def evaluate_run(workdir, settings: list[tuple[str, int, float]], *, num: int, batch: int, seed: int = 0,
                 features: str = "auto", classifier_weights: Optional[str] = None,
                 inception_weights: Optional[str] = None, nll_examples: int = 0, stats_dir=None,
                 guide: str = "", scale: float = 0.0, classifier_workdir: Optional[str] = None,
                 clip_run: Optional[str] = None, nll_methods=("vlb",), ode_ignores_learned_variance: bool = False,
                 clip_score_run: Optional[str] = None, step: Optional[int] = None,
                 weights: str = "ema", spacing: Optional[str] = None) -> tuple[list, dict]:
    """Rows of every metric (the held-out split first, then each setting; a latent run's samples
    decoded to images) and the NLL by each of ``nll_methods`` ({method: record}; a latent run's in
    bits per latent dimension, of its scaled held-out latents), also written to ``<workdir>/eval/*.json`` (with the
    checkpoint's step; each NLL measured once per step and count, ``nll_record``);
    ``<workdir>/eval/results.md`` tables everything measured at that step, this call's settings
    and earlier calls' alike. Samples drawn for prompts are also scored by the CLIP run
    ``clip_score_run`` (``clip_scorer``), when given. ``step`` (a kept checkpoint's; default the
    latest) and ``weights`` ("raw": ``TrainState.params`` instead of their EMA; ``inference.load_run``)
    measure another checkpoint: its records go to ``<workdir>/eval/step<n>_<weights>/``
    (``eval_dir``), leaving the latest EMA's in ``<workdir>/eval/``. ``spacing`` (one of
    ``schedules.SPACING_NAMES``; None: the config's ``sample.spacing``) chooses every setting's kept
    steps, and is named in its tag."""
    build.check_flags_at_least(1, num=num, batch=batch)
    build.check_flags_at_least(0, nll_examples=nll_examples)
    run = inference.load_run(workdir, step, weights)
    config = run.config
    inference.check_draws_alone(config)
    for method in nll_methods if nll_examples > 0 else ():
        check_nll_method(method, config, ode_ignores_learned_variance)
    for sampler, steps, _ in settings:   # every setting is checked before any is drawn
        samplers.check_steps(sampler, steps, run.schedule.num_steps, what=f"{sampler}:{steps} steps")
    mesh = parallel.make_mesh()
    scorer = clip_scorer(clip_score_run, mesh) if clip_score_run else None
    out = eval_dir(workdir, None if step is None and weights == "ema" else run.step, weights)
    out.mkdir(parents=True, exist_ok=True)
    ref = reference_for(config, mesh, stats_dir or eval_dir(workdir) / "reference_stats", features=features,
                        classifier_weights=classifier_weights, inception_weights=inception_weights)
    heldout, feature_name, feature_fn, reference = ref.heldout, ref.feature_name, ref.feature_fn, ref.stats
    rows = [dict(name=f"held-out split ({len(heldout)} real images)",
                 **quality(*split_features(feature_fn, heldout), reference))]
    classifier = inference.load_noisy_classifier(classifier_workdir, run.schedule) if guide == "classifier" else None
    clip_guide = clip_guidance.load(clip_run, run) if guide == "clip" else None
    prompts, domain, condition = heldout_condition(run, heldout, num, clip_guide)
    for sampler, steps, eta in settings:
        images = samples_for(run, mesh, out, sampler, steps, eta, num=num, batch=batch, seed=seed, guide=guide,
                             scale=scale, classifier_log_prob=classifier, clip_guide=clip_guide, condition=condition,
                             spacing=spacing)
        tag = setting_tag(sampler, steps, eta, guide, scale, spacing=spacing)
        feats, probs = feature_fn(images)
        row = dict(name=tag, sampler=sampler, steps=steps, eta=eta, spacing=spacing or config.sample.spacing,
                   guidance=guide, scale=scale,
                   **quality(feats, probs, reference))
        if prompts is not None:
            row.update(text_alignment(domain, images, probs, prompts, scorer))
        rows.append(row)
        if jax.process_index() == 0:
            record = dict(row, step=run.step, weights=weights, features=feature_name)
            (out / f"{tag}.json").write_text(json.dumps(record, indent=2))
            print(f"{tag}: {summary(row, feature_name)}")
    nlls = {}
    if nll_examples > 0 and has_bound(config):
        nll_data = heldout
        if run.latent is not None:   # the bound of what the model diffuses: bits per latent dimension
            nll_data = parallel.encode_split(run.latent.encode, heldout.head(nll_examples), mesh)
        nlls = {method: nll_record(run, mesh, nll_data, nll_examples, out, seed=seed, method=method)
                for method in nll_methods}
    if jax.process_index() == 0:
        measured, measured_nlls = recorded(out, run.step, feature_name)
        table = markdown(rows[:1] + measured, measured_nlls, feature_name)
        raw = " (raw weights, no EMA)" if weights == "raw" else ""
        (out / "results.md").write_text(f"# {workdir} at step {run.step}{raw}\n\n" + table)
        print(table)
    return rows, nlls
