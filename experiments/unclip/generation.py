"""unCLIP sampled through its stages (Ramesh et al. 2022, §2): a prompt → the prior's CLIP image
embedding → the decoder's image (``sample_prompts``), and image variations, an image's own CLIP
embedding → several decoder samples (``sample_variations``, §3.1), and unCLIP measured on the held-out
captions (``evaluate``, ``heldout_samples``). Behind ``experiments.sample --unclip`` and ``--variations``
and ``experiments.evaluate --unclip``; every refusal comes before a checkpoint is read or a sample drawn."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from diffusion import parallel, samplers
from diffusion.data import datasets
from diffusion.text.tokenizer import null_caption
from diffusion.unclip import embedding
from experiments import build, draw_cache, inference, runs, scoring
from experiments.cascade import chain
from experiments.text import captioning, clip_runs
from experiments.unclip import stage_runs


@dataclass(frozen=True)
class Settings:
    """How the decoder draws (the prior draws with its config's own ``sample`` settings) and how many."""
    sampler: str
    steps: int
    eta: float
    clip: Optional[str]     # the decoder's x̂_0 thresholding; None: its config's
    num: int                # samples per prompt or per image
    batch: int
    seed: int


def check_stages(workdirs) -> None:
    """Refuse, from the saved configs alone, a pair that is not a prior then a decoder on one CLIP run."""
    if len(workdirs) != 2:
        raise ValueError(f"--unclip takes two workdirs, the prior's then the decoder's (got {len(workdirs)}): "
                         "--unclip runs/unclip_prior,runs/unclip_decoder")
    prior, decoder = (runs.load_config(w) for w in workdirs)
    for config, kind, workdir in ((prior, stage_runs.PRIOR, workdirs[0]), (decoder, stage_runs.DECODER, workdirs[1])):
        if config.model.kind != kind:
            raise ValueError(f"--unclip: {workdir} is a model.kind={config.model.kind!r} run where the {kind} belongs: "
                             "give the prior's workdir, then the decoder's")
    if Path(prior.model.clip_run).resolve() != Path(decoder.model.clip_run).resolve():
        raise ValueError(f"--unclip: the prior draws embeddings of the CLIP run {prior.model.clip_run}, but the decoder "
                         f"reads those of {decoder.model.clip_run}; they are different spaces: train both stages on "
                         "one CLIP run (model.clip_run)")


def decode(decoder: inference.Run, draw, mesh, s: Settings, embeddings: np.ndarray, tokens: Optional[np.ndarray],
           scale: float, first: int = 0) -> np.ndarray:
    """uint8 images [N, H, W, C] the decoder draws (``draw``: ``decoder_draw_fn``'s) for CLIP image
    embeddings [N, E] (re-projected to ``embedding_space``, where it was trained) and, for a decoder
    that reads one, each one's caption: rows ``first`` … of a draw, seeded by their position in it
    (``inference.draw_samples``), so a cached draw continues exactly."""
    pad = lambda a: np.concatenate([np.zeros((first,) + a.shape[1:], a.dtype), a])   # rows before first: never read
    condition = {"cond_vector": pad(np.asarray(embedding.embedding_space(embeddings)))}
    if decoder.tokenizer is not None:
        condition["tokens"] = pad(tokens)
    return inference.draw_samples(decoder, draw, mesh, num=first + len(embeddings), batch=s.batch, seed=s.seed,
                                 scale=scale, condition=condition, desc="decoder", first=first)


def decoder_draw_fn(decoder: inference.Run, mesh, s: Settings, scale: float):
    """The decoder's ``inference.build_draw_fn`` with ``s``'s sampler; guided (``scale`` ≠ 0) against the
    null embedding (and the null caption): ε̃ = (1 + w)·ε(x, z_i, y) − w·ε(x, 0, ∅)."""
    return inference.build_draw_fn(decoder, mesh, sampler=s.sampler, steps=s.steps, eta=s.eta, clip=s.clip,
                                  guide="classifier_free" if scale else "")


def through_stages(prior: inference.Run, decoder: inference.Run, mesh, s: Settings, tokens: np.ndarray,
                   decoder_tokens: Optional[np.ndarray], scales: tuple[float, float], first: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, CLIP image embeddings) of rows ``first`` … of prompts given as the prior's token
    ids [N, L] (and the decoder's, for one that reads the caption): z_i ~ P(z_i | y) by the prior with
    its config's sampler, guided with ``scales[0]`` against the null caption, then x ~ P(x | z_i[, y]) by
    the decoder with ``s``'s, guided with ``scales[1]`` against the null embedding (unCLIP §2)."""
    prior_scale, decoder_scale = scales
    decoder_draw = decoder_draw_fn(decoder, mesh, s, decoder_scale)   # refuses unseen guidance before the prior draws
    own = prior.config.sample
    prior_draw = inference.build_draw_fn(prior, mesh, sampler=own.sampler, steps=own.steps, eta=own.eta,
                                        guide="classifier_free" if prior_scale else "")
    embeddings = inference.draw_samples(prior, prior_draw, mesh, num=len(tokens), batch=s.batch, seed=s.seed,
                                       scale=prior_scale, condition=tokens, desc="prior", first=first)
    images = decode(decoder, decoder_draw, mesh, s, embeddings,
                    None if decoder_tokens is None else decoder_tokens[first:], decoder_scale, first)
    return images, embeddings


def stage_tokens(workdir, prompts) -> Optional[np.ndarray]:
    """``prompts``' token ids for a stage that reads captions (None for one that does not: a decoder
    of the embedding alone), refused from its config and tokenizer before its checkpoint is read."""
    config = runs.load_config(workdir)
    build.validate(config)
    if not captioning.is_conditioned(config):
        return None
    return inference.tokens_for(config, captioning.read_tokenizer(config, workdir), prompts)


def sample_prompts(workdirs, prompts: list[str], scales, s: Settings, out=None) -> Path:
    """``s.num`` images of each prompt through prior then decoder (unCLIP §2): z_i ~ P(z_i | y) by the
    prior, guided with the first of ``scales`` against the null caption, then x ~ P(x | z_i[, y]) by
    the decoder, guided with the second against the null embedding. Writes the grid, each prompt
    above its images, and ``.npz`` with the images, prompts and embeddings; returns the grid's path."""
    check_stages(workdirs)
    prior_scale, decoder_scale = stage_weights(scales)
    tokens, decoder_tokens = (stage_tokens(w, prompts) for w in workdirs)
    prior, decoder = inference.load_run(workdirs[0]), inference.load_run(workdirs[1])
    samplers.check_steps(s.sampler, s.steps, decoder.schedule.num_steps, what="--steps")
    images, embeddings = through_stages(
        prior, decoder, parallel.make_mesh(), s, np.repeat(tokens, s.num, axis=0),
        None if decoder_tokens is None else np.repeat(decoder_tokens, s.num, axis=0), (prior_scale, decoder_scale))
    out = Path(out or Path(workdirs[1]) / "sample")
    tag = f"unclip_{s.sampler}{s.steps}_w{prior_scale:g},{decoder_scale:g}_seed{s.seed}"
    inference.write_prompt_grid(out, tag, prompts, images, embedding=embeddings)
    return out / f"{tag}.png"


def variation_source(config, source: str) -> tuple[np.ndarray, str]:
    """(uint8 image [1, 28, 28, 1], its name) of ``--variations``: a PNG file (grey, resized to
    28×28), or the index of a held-out image of the decoder's data."""
    path = Path(source)
    if path.is_file():
        from PIL import Image
        with Image.open(path) as picture:
            image = np.asarray(picture.convert("L"))[None, :, :, None]
        return datasets.resize_images(image, config.data.image_size), path.stem
    if not source.isdigit():
        raise ValueError(f"--variations={source!r} is neither an image file nor a held-out index: give a PNG path or "
                         "an integer")
    heldout = build.load_data(config)[1]
    index = int(source)
    if index >= len(heldout):
        raise ValueError(f"--variations={index}: the decoder's data hold {len(heldout)} held-out images: use 0 … "
                         f"{len(heldout) - 1}")
    return heldout.images[index:index + 1], f"heldout{index}"


def sample_variations(run: inference.Run, workdir, source: str, scale: float, s: Settings, out=None) -> Path:
    """Image variations (unCLIP §3.1): ``source``'s CLIP image embedding, ``s.num`` decoder samples of
    it (guided with ``scale``; a decoder that reads a caption is given the null caption). Writes the
    image above its variations; returns the grid's path."""
    if run.config.model.kind != stage_runs.DECODER:
        raise ValueError(f"--variations decodes an image's CLIP embedding: {workdir} is not an unCLIP decoder "
                         f"(model.kind={run.config.model.kind!r}); give --workdir <decoder workdir>")
    if run.tokenizer is not None:
        captioning.check_null_caption(run.config, "a variation, which has no caption,")
    samplers.check_steps(s.sampler, s.steps, run.schedule.num_steps, what="--steps")
    image, name = variation_source(run.config, source)
    mesh = parallel.make_mesh()
    draw = decoder_draw_fn(run, mesh, s, scale)
    embed = stage_runs.image_embedder(*clip_runs.load_frozen(run.config.model.clip_run)[:2])
    z = np.asarray(jax.jit(embed)(datasets.to_model_range(image)))
    tokens = None if run.tokenizer is None else np.repeat(null_caption(run.tokenizer.max_length)[None], s.num, axis=0)
    images = decode(run, draw, mesh, s, np.repeat(z, s.num, axis=0), tokens, scale)
    out = Path(out or Path(workdir) / "sample")
    tag = f"variations_{name}_{s.sampler}{s.steps}_w{scale:g}_seed{s.seed}"
    inference.write_grid(out, tag, [(f"{name} (its CLIP embedding is decoded below)", image),
                                   (f"{s.num} variations, w = {scale:g}", images)], image=images, source=image, embedding=z)
    return out / f"{tag}.png"


def setting_tag(s: Settings, scales: tuple[float, float]) -> str:
    """The name of an unCLIP measurement: the decoder's setting and both stages' guidance weights."""
    return f"unclip_{draw_cache.setting_tag(s.sampler, s.steps, s.eta, clip=s.clip)}_w{scales[0]:g},{scales[1]:g}"


def stage_weights(scales) -> tuple[float, float]:
    """``--scales`` as the (prior, decoder) guidance weights: one value is both stages'."""
    return tuple(float(w) for w in chain.per_stage(scales, 2, "--scales"))


def heldout_samples(workdirs, scales, s: Settings, mesh, heldout: datasets.Split) -> tuple[np.ndarray, list[str], str]:
    """(uint8 images [s.num, ...], their prompts, the prompts' caption domain): unCLIP's samples
    (``through_stages``) for the held-out captions in turn (``draw_cache.heldout_prompts`` of
    ``heldout``, a held-out split of the decoder's data, phrased in the prior's caption domain), as a text run is measured; drawn once and
    kept in ``<decoder>/eval/samples_<tag>_seed<s>_step<prior step>,<decoder step>.npz``. Refused from
    the configs (stages, weights, prompts, steps) before a sample is drawn."""
    check_stages(workdirs)
    weights = stage_weights(scales)
    prior, decoder = inference.load_run(workdirs[0]), inference.load_run(workdirs[1])
    domain = prior.config.data.captions
    samplers.check_steps(s.sampler, s.steps, decoder.schedule.num_steps, what="--samplers")
    prompts = draw_cache.heldout_prompts(decoder, heldout, s.num, domain)
    tokens, decoder_tokens = (stage_tokens(w, prompts) for w in workdirs)
    path = (Path(workdirs[1]) / "eval" /
            f"samples_{setting_tag(s, weights)}_seed{s.seed}_step{prior.step},{decoder.step}.npz")
    draw_from = lambda first: {"image": through_stages(prior, decoder, mesh, s, tokens, decoder_tokens, weights,
                                                       first)[0]}
    return draw_cache.cached_draws(path, s.num, s.batch, draw_from)["image"], prompts, domain


def evaluate(workdirs, scales, s: Settings, *, features: str = "auto", classifier_weights: Optional[str] = None,
             stats_dir=None, clip_score_run: Optional[str] = None) -> dict:
    """unCLIP's ``heldout_samples`` measured as a text run's (``results.evaluate_run``): every metric
    of ``scoring.METRICS`` against the decoder's training split and the prompt alignment
    (``scoring.text_alignment``, with the CLIP score by ``clip_score_run`` when given), written to
    ``<decoder>/eval/<tag>.json``."""
    build.check_flags_at_least(1, num=s.num, batch=s.batch)
    mesh = parallel.make_mesh()
    scorer = scoring.clip_scorer(clip_score_run, mesh) if clip_score_run else None
    config = runs.load_config(workdirs[1])
    out = Path(workdirs[1]) / "eval"
    ref = scoring.reference_for(config, mesh, stats_dir or out / "reference_stats", features=features,
                                   classifier_weights=classifier_weights)
    feature_name, reference = ref.feature_name, ref.stats
    images, prompts, domain = heldout_samples(workdirs, scales, s, mesh, ref.heldout)
    feats, probs = ref.feature_fn(images)
    weights = stage_weights(scales)
    record = dict(scoring.quality(feats, probs, reference), **scoring.text_alignment(
        domain, images, probs, prompts, scorer), stages=[str(w) for w in workdirs], features=feature_name,
        sampler=s.sampler, steps=s.steps, eta=s.eta, scales=list(weights))
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        tag = setting_tag(s, weights)
        (out / f"{tag}.json").write_text(json.dumps(record, indent=2))
        print(f"{tag}: {scoring.summary(record, feature_name)}")
    return record
