"""Guidance by name (``--guidance``): each entry of ``GUIDES`` refuses, before any work, a run it cannot
guide, and wraps the network's model function into the guided one with the conditioning that one
reads (wrappers over branches, as k-diffusion's ``external.py``; the wrappers are
``diffusion.guidance``'s)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from diffusion import guidance
from diffusion.text.tokenizer import null_caption
from diffusion.unclip import embedding
from experiments import build
from experiments.text import captioning
from experiments.unclip import stage_runs


@dataclass(frozen=True)
class GuideModels:
    """The trained models a guide differentiates besides the network: a noisy classifier's
    ``log_prob_fn(x_t, timesteps, labels) -> [B]`` (``inference.load_noisy_classifier``) and a noised
    CLIP (``clip_guidance.ClipGuide``); None where the run has none."""
    classifier_log_prob: Optional[Callable] = None
    clip_guide: Any = None


@dataclass(frozen=True)
class Guide:
    """One guidance method. ``check(run, models)`` refuses a run (``inference.Run``) it cannot guide,
    before any work; ``wrapper(run, models)``, called once as the draw is built, gives
    ``wrap(model_fn, condition, scale) -> (guided model_fn, cond)``, traced inside the compiled draw:
    the model function to sample and the network's conditioning for the draw's ``condition`` [B, ...]
    and guidance weight w = ``scale``."""
    check: Callable[[Any, GuideModels], None]
    wrapper: Callable[[Any, GuideModels], Callable]


def network_condition(config, condition) -> Optional[dict]:
    """The network's conditioning for a draw's ``condition``: ``build.conditioning``'s, except for an
    unCLIP decoder, whose condition already is the network's ({'cond_vector'[, 'tokens']})."""
    return dict(condition) if config.model.kind == stage_runs.DECODER else build.conditioning(config, condition)


def no_check(run, models: GuideModels):
    """Every run can be drawn unguided."""


def wrap_unguided(run, models: GuideModels) -> Callable:
    """The network's own model function, given the run's conditioning."""
    return lambda model_fn, condition, scale: (model_fn, network_condition(run.config, condition))


def check_classifier_free(run, models: GuideModels):
    """Refuse classifier-free guidance of a run without a null condition it was trained on: an unCLIP
    decoder without embedding dropout, a model that reads neither classes nor text, a
    text-conditioned one that never saw the null caption."""
    config = run.config
    if config.model.kind == stage_runs.DECODER:
        check_decoder_guidance(run)
    elif config.model.num_classes == 0 and not captioning.is_conditioned(config):
        raise ValueError("classifier-free guidance needs a class-conditional (configs/mnist_cfg.py) or text-conditioned "
                         "model (configs/text/text_mnist.py)")
    elif captioning.is_conditioned(config):
        captioning.check_null_caption(config, "classifier-free guidance's unconditional pass")


def check_decoder_guidance(run):
    """Refuse guiding an unCLIP decoder whose null condition (the zero embedding, and the null caption
    where it reads one) it never saw in training."""
    if run.config.unclip.embedding_dropout <= 0:
        raise ValueError("the decoder's guidance subtracts its pass on the null (zero) embedding, which it never saw "
                         "in training (unclip.embedding_dropout=0): train with 0.1 (the paper's), or use scale 0")
    if run.tokenizer is not None:
        captioning.check_null_caption(run.config, "the decoder's unconditional pass")


def decoder_nulls(run) -> dict:
    """An unCLIP decoder's null condition (unCLIP §2.1): the zero embedding, and the null caption where
    it reads one; {} for any other run."""
    if run.config.model.kind != stage_runs.DECODER:
        return {}
    nulls = {"null_embedding": embedding.null_embedding(1, stage_runs.embed_dim(run.config))}
    if run.tokenizer is not None:
        nulls["null_caption"] = null_caption(run.tokenizer.max_length)
    return nulls


def wrap_classifier_free(run, models: GuideModels) -> Callable:
    """ε̃ = (1 + w)·ε(x, c) − w·ε(x, ∅) (Ho & Salimans 2021, eq. 6), ∅ the run's null: the decoder's,
    the null caption (GLIDE §2.3) of the condition's length L, or the label ``model.num_classes``."""
    config, nulls, captioned = run.config, decoder_nulls(run), captioning.is_conditioned(run.config)

    def wrap(model_fn, condition, scale):
        null = nulls or ({"null_caption": null_caption(condition.shape[1])} if captioned
                         else {"null_label": config.model.num_classes})
        guided = guidance.classifier_free(model_fn, variance=config.diffusion.variance, **null)
        return guided, dict(network_condition(config, condition), guidance_scale=scale)
    return wrap


def check_classifier(run, models: GuideModels):
    """Refuse classifier guidance of a text-conditioned run, without a noisy classifier, or of a run
    that diffuses latents (the classifier reads pixels)."""
    if captioning.is_conditioned(run.config):
        raise ValueError("classifier guidance steers towards a class label; this run is text-conditioned: use "
                         "--guidance classifier_free with --prompt")
    if models.classifier_log_prob is None:
        raise ValueError("classifier guidance needs a noisy classifier (--classifier_workdir)")
    if run.latent is not None:
        raise ValueError("classifier guidance differentiates a noisy classifier of pixels; this run diffuses latents "
                         "(data.autoencoder): use --guidance classifier_free with a class-conditional latent run")


def wrap_classifier(run, models: GuideModels) -> Callable:
    """ε̃ = ε − √(1−ᾱ_t)·w·∇_x log p_φ(y | x_t, t) (Dhariwal & Nichol 2021, Algorithm 2) towards the
    class labels int[B] of ``condition``, given to the network too where it is class-conditional."""
    config = run.config

    def wrap(model_fn, condition, scale):
        guided = guidance.classifier(model_fn, models.classifier_log_prob, run.schedule,
                                     prediction=config.diffusion.prediction, variance=config.diffusion.variance,
                                     conditional=config.model.num_classes > 0)
        return guided, {"labels": condition, "guidance_scale": scale}
    return wrap


def check_clip(run, models: GuideModels):
    """Refuse CLIP guidance without a noised CLIP."""
    if models.clip_guide is None:
        raise ValueError("CLIP guidance needs a noised CLIP (--clip_run; clip_guidance.load)")


def wrap_clip(run, models: GuideModels) -> Callable:
    """ε̃ = ε − √(1−ᾱ_t)·w·∇_x (1/τ)·cos(f(x_t, t), g(c)) (GLIDE §2.4); ``condition`` is the dict
    ``clip_guidance.prompt_condition`` gives ({'text_embedding'[, 'tokens']}, each [B, ...])."""
    config, guide = run.config, models.clip_guide

    def wrap(model_fn, condition, scale):
        guided = guidance.clip(model_fn, guide.encode_image, guide.logit_scale, run.schedule,
                               prediction=config.diffusion.prediction, variance=config.diffusion.variance)
        return guided, dict(condition, guidance_scale=scale)
    return wrap


GUIDES = {
    "": Guide(no_check, wrap_unguided),
    "classifier_free": Guide(check_classifier_free, wrap_classifier_free),
    "classifier": Guide(check_classifier, wrap_classifier),
    "clip": Guide(check_clip, wrap_clip),
}


def lookup(name: str) -> Guide:
    """``GUIDES[name]``, refusing an unknown name with the choices."""
    if name not in GUIDES:
        raise ValueError(f"unknown guidance {name!r}; choose one of {tuple(GUIDES)}")
    return GUIDES[name]
