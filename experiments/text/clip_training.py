"""Behind ``experiments.train_clip``: a config → captions, tokenizer and CLIP model; training through
``loop.run_loop``; held-out zero-shot accuracy and retrieval recall; a trained CLIP read back."""
from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Optional

import jax
import ml_collections
import numpy as np

from diffusion import training
from diffusion.data import datasets
from diffusion.text import captions, contrastive
from diffusion.text.clip import CLIP
from diffusion.text.tokenizer import build_tokenizer, Tokenizer
from experiments import build, loop
from experiments.text import captioning, clip_runs
from experiments.text.clip_runs import init_params, make_clip, validate

load_clip = clip_runs.load_clip   # a trained CLIP read back, here beside its training

REPORT_FILE = "clip_eval.json"


def run_tokenizer(c: ml_collections.ConfigDict, workdir: Path, train: datasets.Split) -> tuple[Tokenizer, list]:
    """(tokenizer, every template's caption of every training image [N][K]). The vocabulary is the
    training captions' words and the class prompts'; it is written to ``<workdir>/tokenizer.json``,
    and a resumed run whose data would give another is refused."""
    candidates = captions.candidate_captions(c.clip.domain, train.images, train.labels)
    texts = [t for row in candidates for t in row] + captions.class_prompts(c.clip.domain)
    tokenizer = captioning.keep(build_tokenizer(texts, c.clip.max_length), workdir, "this config's data gives: the run was "
                          "made with other data or clip settings; use a new --workdir")
    return tokenizer, candidates


def evaluate(c: ml_collections.ConfigDict, model: CLIP, params, heldout: datasets.Split, tokenizer: Tokenizer,
             mesh, timestep: Optional[int] = None) -> dict:
    """Zero-shot class accuracy on every held-out image ("the digit k" per class, the most similar
    prompt's class) and recall@1/@5 of retrieval both ways among the first ``clip.retrieval_examples``
    held-out images and their captions (drawn with ``seed``; identical captions count as one)."""
    domain = c.clip.domain
    schedule = build.make_schedule(c) if timestep is not None else None
    image_emb = contrastive.normalize(clip_runs.embed_images(model, params, heldout.images, mesh, schedule=schedule,
                                                   timestep=timestep))
    prompts = contrastive.normalize(clip_runs.embed_texts(model, params, tokenizer.encode(captions.class_prompts(domain)), mesh))
    n = min(len(heldout), c.clip.retrieval_examples)
    texts = captions.captions(domain, heldout.images[:n], heldout.labels[:n], seed=c.seed)
    tokens = tokenizer.encode(texts)
    text_emb = contrastive.normalize(clip_runs.embed_texts(model, params, tokens, mesh))
    similarity = image_emb[:n] @ text_emb.T
    groups = np.unique(tokens, axis=0, return_inverse=True)[1].reshape(-1)
    report = {"timestep": timestep,
              "zero_shot_accuracy": float(contrastive.zero_shot_accuracy(image_emb @ prompts.T, heldout.labels))}
    for k in (1, 5):
        report[f"image_to_text_recall@{k}"] = float(contrastive.recall_at_k(similarity, k, groups))
        report[f"text_to_image_recall@{k}"] = float(contrastive.recall_at_k(similarity.T, k, groups))
    return report


def train_clip(config: ml_collections.ConfigDict, workdir, *, fall_back: bool = False
               ) -> tuple[training.TrainState, dict]:
    """Train (or resume) a CLIP on captioned images; write ``<workdir>/tokenizer.json`` and the
    held-out zero-shot accuracy and recall@k to ``<workdir>/clip_eval.json`` (a noise-aware model
    at t = 0, T/4 and T/2)."""
    validate(config)
    workdir, mesh = loop.prepare_run(config, workdir)
    train, heldout = build.load_data(config, labels_used=True)
    tokenizer, candidates = run_tokenizer(config, workdir, train)
    caption_tokens = tokenizer.encode([t for row in candidates for t in row]).reshape(len(train), len(candidates[0]), -1)
    # The trainer's batches carry a split's labels: here each image's K captions as token ids.
    batches = loop.training_batches(config, dataclasses.replace(train, labels=caption_tokens))
    model = make_clip(config, tokenizer)
    schedule = build.make_schedule(config) if config.clip.noise_aware else None
    tx = build.make_optimizer(config)
    init = lambda k: training.create_train_state(k, init_params(config, model, k), tx, 1)
    state, start, ckpt = loop.restore_or_init(config, workdir, init, mesh, fall_back=fall_back)
    step_fn = loop.jit_step(partial(contrastive.contrastive_step, apply_fn=model.apply, tx=tx,
                                       ema_decay=config.ema.decay, ema_warmup=config.ema.warmup, schedule=schedule),
                               state, mesh)
    state = loop.run_loop(config, workdir, state, start, ckpt, step_fn, batches, mesh, desc="clip")
    T = config.diffusion.num_steps
    timesteps = (0, T // 4, T // 2) if config.clip.noise_aware else (None,)
    report = {"heldout_examples": len(heldout), "retrieval_examples": min(len(heldout), config.clip.retrieval_examples),
              "steps": config.train.num_steps,
              "evaluations": [evaluate(config, model, state.ema_params, heldout, tokenizer, mesh, t) for t in timesteps]}
    if jax.process_index() == 0:
        (workdir / REPORT_FILE).write_text(json.dumps(report, indent=2))
        for r in report["evaluations"]:
            at = "" if r["timestep"] is None else f"t={r['timestep']}: "
            print(f"held-out {at}" + ", ".join(f"{k}={v:.4f}" for k, v in r.items() if k != "timestep"))
    return state, report
