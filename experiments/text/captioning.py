"""A text-conditioned run's pieces from its config (GLIDE, Nichol et al. 2022; Imagen, Saharia et
al. 2022): which caption encoder τθ the U-Net reads, the tokenizer it reads ids of, the caption each
training image carries, and the tokenizer kept with the run. ``hooks.check`` refuses the
configs that cannot run."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import ml_collections
import numpy as np

from diffusion.data import datasets
from diffusion.models.conditioning import FrozenTextTokens, TextTokens
from diffusion.text import captions
from diffusion.text.tokenizer import build_tokenizer, Tokenizer, TOKENIZER_FILE
from experiments import runs
from experiments.text import clip_runs

ENCODERS = ("text", "clip_text")   # τθ of a caption: trained with the U-Net (GLIDE), or a CLIP run's frozen text tower (Imagen-style)


def is_conditioned(c: ml_collections.ConfigDict) -> bool:
    """Whether the model reads captions (``model.context_encoder`` 'text' or 'clip_text')."""
    return c.model.context_encoder in ENCODERS


def tokenizer_of(c: ml_collections.ConfigDict) -> Tokenizer:
    """The tokenizer of a text-conditioned config. 'text': the vocabulary of every caption the
    templates of ``data.captions`` can phrase, and its class prompts, with room for the longest
    (a function of the config alone, so the encoder's shapes are known before any data is read);
    'clip_text': the CLIP run's own (``<model.clip_run>/tokenizer.json``), whose ids its tower reads."""
    if c.model.context_encoder == "clip_text":
        return Tokenizer.load(Path(c.model.clip_run) / TOKENIZER_FILE)
    return build_tokenizer(captions.every_caption(c.data.captions) + captions.class_prompts(c.data.captions))


def make_encoder(c: ml_collections.ConfigDict, load_frozen: bool = True):
    """τθ of a caption (GLIDE §3.1): a ``TextTokens`` of width ``model.context_dim`` trained with the
    U-Net ('text'), or the text tower of the CLIP run ``model.clip_run``, its EMA weights frozen
    (``FrozenTextTokens``, 'clip_text'; Imagen §2.1), read from its checkpoint unless
    ``load_frozen`` is False (built to check shapes only)."""
    tokenizer, m = tokenizer_of(c), c.model
    if m.context_encoder == "text":
        return TextTokens(tokenizer.vocab_size, tokenizer.max_length, m.context_dim, m.text_layers, m.text_heads)
    k = runs.load_config(m.clip_run).clip
    tower = TextTokens(tokenizer.vocab_size, tokenizer.max_length, k.text_width, k.text_layers, k.text_heads,
                       parent=None)
    return FrozenTextTokens(tower, clip_runs.load_frozen(m.clip_run)[1]["text_tower"] if load_frozen else None)


def captioned(c: ml_collections.ConfigDict, split: datasets.Split) -> datasets.Split:
    """``split`` with each image's caption (``captions.captions``, its template drawn once with
    ``seed``) as token ids of ``tokenizer_of``: a fixed caption per image, so the batches stay a
    pure function of the step and a resumed run sees the same captions."""
    texts = captions.captions(c.data.captions, split.images, split.labels, seed=c.seed)
    return dataclasses.replace(split, tokens=tokenizer_of(c).encode(texts, strict=True))


def keep(tokenizer: Tokenizer, workdir, why: str) -> Tokenizer:
    """``tokenizer`` kept as ``<workdir>/tokenizer.json`` (written at a run's start, where sampling
    reads it back); a resume that gives another is refused, ``why`` ending the message."""
    path = Path(workdir) / TOKENIZER_FILE
    if path.exists() and Tokenizer.load(path) != tokenizer:
        raise ValueError(f"{path} holds another vocabulary than {why}")
    if jax.process_index() == 0:
        tokenizer.save(path)
    return tokenizer


def keep_tokenizer(c: ml_collections.ConfigDict, workdir) -> Tokenizer:
    """A text-conditioned run's ``tokenizer_of``, kept in its workdir (``keep``)."""
    return keep(tokenizer_of(c), workdir, "this config gives (data.captions, model.clip_run, or the caption "
                                          "templates changed): use a new --workdir")


def read_tokenizer(c: ml_collections.ConfigDict, workdir) -> Tokenizer:
    """The tokenizer a text-conditioned run was trained with (``<workdir>/tokenizer.json``), refused
    when missing or when today's config would give another (its ids would name other words)."""
    path = Path(workdir) / TOKENIZER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is text-conditioned but holds no tokenizer; "
                                "train it with python -m experiments.train, which writes it")
    tokenizer = Tokenizer.load(path)
    if tokenizer != tokenizer_of(c):
        raise ValueError(f"{path} differs from the tokenizer this run's config gives now (the caption templates or "
                         f"{c.model.clip_run or 'the CLIP run'}'s tokenizer changed): its token ids would be misread")
    return tokenizer


def check_prompts(tokenizer: Tokenizer, prompts, whose: str = "") -> np.ndarray:
    """Token ids int32 [P, L] of ``prompts``, refused when one has words outside the vocabulary (named,
    and the vocabulary listed) or more than the context holds. ``whose``: the model they are for when
    not the run being sampled (e.g. "the CLIP runs/clip"), named in both refusals."""
    unknown = {p: tokenizer.unknown_words(p) for p in prompts if tokenizer.unknown_words(p)}
    if unknown:
        vocabulary = f"the vocabulary of {whose}" if whose else "this run's vocabulary"
        raise ValueError(f"prompts with words outside {vocabulary}: "
                         + "; ".join(f"{p!r}: {words}" for p, words in unknown.items())
                         + f". Its words: {', '.join(tokenizer.words[3:])}")
    try:
        return tokenizer.encode(prompts, strict=True)
    except ValueError as e:
        if not whose:
            raise
        raise ValueError(f"{whose}: {e}") from e


def check_null_caption(c: ml_collections.ConfigDict, what: str):
    """Refuse to use the null caption (the empty prompt, guidance's unconditional pass) of a run that
    never saw it in training (``train.caption_dropout`` = 0): its output there means nothing."""
    if c.train.caption_dropout <= 0:
        raise ValueError(f"{what} is the null caption (the empty prompt), which this run never saw in training "
                         "(train.caption_dropout=0): train with --config.train.caption_dropout=0.2 (GLIDE's) to use it")
