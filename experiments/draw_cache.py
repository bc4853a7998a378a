"""A sampler setting's draws kept on disk: settings as the command line writes them
(``ddim:50:0.5``) and as file names and tables name them (``ddim50_eta0.5``), a run's samples of
one setting drawn once and extended exactly (``cached_draws``), and the held-out captions a run
is drawn for (GLIDE §4, Imagen §4.1 measure samples against such prompts)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np

from diffusion import samplers
from diffusion.data import datasets
from diffusion.text import captions
from experiments import inference
from experiments.text import clip_guidance


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


def load_guides(run, guide: str, classifier_workdir: Optional[str] = None, clip_run: Optional[str] = None) -> dict:
    """``inference.build_draw_fn``'s guide arguments for guidance ``guide`` (``inference.GUIDANCE``):
    the noisy classifier of ``classifier_workdir`` for "classifier", the noise-aware CLIP of
    ``clip_run`` for "clip" (``clip_guidance.load``), each read back and checked against ``run``."""
    classifier = inference.load_noisy_classifier(classifier_workdir, run.schedule) if guide == "classifier" else None
    return dict(classifier_log_prob=classifier,
                clip_guide=clip_guidance.load(clip_run, run) if guide == "clip" else None)
