"""CLIP guidance's glue (GLIDE, Nichol et al. 2022, §2.4, §3.4): a noised CLIP run read back and
checked against the diffusion run it guides, and the prompts' text embeddings g(c), computed once
per prompt, as the condition of ``guidance.clip``'s guided model function (built in
``inference.build_draw_fn``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import jax
import numpy as np

from diffusion.text import contrastive
from diffusion.text.clip import CLIP
from diffusion.text.tokenizer import split_words, Tokenizer
from experiments import inference
from experiments.text import captioning, clip_runs


@dataclass(frozen=True)
class ClipGuide:
    """A noised CLIP ready to guide: its image tower f(x_t, t) and 1/τ (``guidance.clip``'s
    arguments), and what turns prompts into its text embeddings g(c)."""
    workdir: str
    domain: str                  # the caption domain it was trained on (captions.DOMAINS)
    tokenizer: Tokenizer
    encode_image: Callable       # (x_t [B, H, W, C], timesteps int[B]) -> [B, E]
    logit_scale: float           # 1/τ, the CLIP's learned (clipped) temperature's inverse
    encode_text: Callable        # token ids int[P, L] -> [P, E]


def load(workdir, run: inference.Run) -> ClipGuide:
    """The noised CLIP of ``workdir`` (``experiments.train_clip``), refused before any work when it
    cannot guide ``run``: missing, not a CLIP run, not noise-aware (GLIDE §3.4: a CLIP of clean
    images is out of distribution on x_t and its gradient misleads), trained on other images (data
    source, size or channels) or another noise schedule (its t would mean another noise level), or
    for a run whose samples it cannot read (latents) or that conditions on class labels."""
    if not workdir:
        raise ValueError("--guidance clip needs --clip_run: a noise-aware CLIP run, trained with python -m "
                         "experiments.train_clip --config configs/text/clip_mnist_noisy.py --workdir runs/clip_mnist_noisy")
    config = clip_runs.check_run(workdir, f"--clip_run={workdir}", clip_config="configs/text/clip_mnist_noisy.py")
    if not config.clip.noise_aware:
        raise ValueError(f"--clip_run={workdir} is a CLIP of clean images (clip.noise_aware=False): CLIP guidance "
                         "differentiates it at every x_t, where it was never trained (GLIDE §3.4 trains a noised CLIP "
                         "for this); train one with --config configs/text/clip_mnist_noisy.py")
    if run.latent is not None:
        raise ValueError("CLIP guidance differentiates a CLIP of pixel images; this run diffuses latents "
                         f"(data.autoencoder={run.config.data.autoencoder}): use --guidance classifier_free")
    if run.config.model.num_classes > 0:
        raise ValueError("CLIP guidance steers an unconditional or text-conditioned model towards a prompt; this run "
                         "is class-conditional (model.num_classes > 0): use --guidance classifier_free with --label")
    ours, theirs = run.config.data, config.data
    if (theirs.source, theirs.image_size, theirs.channels) != (ours.source, ours.image_size, ours.channels):
        raise ValueError(f"--clip_run={workdir} was trained on {theirs.source!r} images of "
                         f"{theirs.image_size}×{theirs.image_size}×{theirs.channels}; this run draws {ours.source!r} "
                         f"images of {ours.image_size}×{ours.image_size}×{ours.channels}: give a CLIP of the same data")
    inference.check_schedule(workdir, config, run.schedule, "CLIP")
    model, params, tokenizer, _ = clip_runs.load_frozen(workdir)   # closed over as constants by the compiled sampler
    return ClipGuide(
        workdir=str(workdir), domain=config.clip.domain, tokenizer=tokenizer,
        encode_image=lambda x, t: model.apply({"params": params}, x, t, method=CLIP.encode_image),
        logit_scale=float(contrastive.logit_scale(params["log_scale"])),
        encode_text=jax.jit(lambda tokens: model.apply({"params": params}, tokens, method=CLIP.encode_text)))


def prompt_condition(run: inference.Run, guide: Optional[ClipGuide], prompts):
    """Each prompt's condition: without ``guide``, the run's token ids (``inference.prompt_tokens``);
    with it, the CLIP-guided model function's: ``text_embedding`` g(c) [P, E], and for a
    text-conditioned run the prompt's ``tokens`` [P, L] in the run's own vocabulary (GLIDE guides
    its text-conditional model given the caption too). Refused: no prompt, the empty prompt (the
    CLIP never saw it: it points nowhere), words outside the CLIP's vocabulary (named) or more than
    its context holds."""
    if guide is None:
        return inference.prompt_tokens(run, prompts)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("--guidance clip steers towards a prompt: give --prompt 'a thick seven' (repeatable) or "
                         "--prompts FILE")
    if any(not split_words(p) for p in prompts):
        raise ValueError(f"--guidance clip towards the empty prompt: the CLIP {guide.workdir} was never trained on it, "
                         "so its similarity points nowhere; give words (or drop --guidance for the null caption)")
    clip_tokens = captioning.check_prompts(guide.tokenizer, prompts, f"the CLIP {guide.workdir}")
    condition = {} if run.tokenizer is None else {"tokens": inference.prompt_tokens(run, prompts)}
    return dict(condition, text_embedding=np.asarray(guide.encode_text(clip_tokens)))
