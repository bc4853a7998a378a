"""Behind ``experiments.train_clip``: a config → captions, tokenizer and CLIP model; training through
``trainer.run_loop``; held-out zero-shot accuracy and retrieval recall; a trained CLIP read back."""
from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import contrastive, gaussian, parallel, training
from diffusion.data import captions, datasets
from diffusion.data.tokenizer import TOKENIZER_FILE, Tokenizer, build_tokenizer
from diffusion.models.clip import CLIP
from experiments import common, runs, trainer

REPORT_FILE = "clip_eval.json"


def validate(c: ml_collections.ConfigDict):
    """Raise ValueError naming the first impossible ``clip`` setting (the rest of the config is
    checked by ``common.validate``)."""
    if "clip" not in c:
        raise ValueError("config has no clip section: start from configs/clip_mnist.py")
    k = c.clip
    if k.domain not in captions.DOMAINS:
        raise ValueError(f"config field clip.domain={k.domain!r} is not one of {list(captions.DOMAINS)}")
    if c.optim.grad_accum_steps != 1:
        raise ValueError(f"config field optim.grad_accum_steps={c.optim.grad_accum_steps!r}: InfoNCE contrasts each "
                         "image with the whole batch's captions, so micro-batches would change the loss; set 1")
    if k.text_width % k.text_heads:
        raise ValueError(f"config field clip.text_width={k.text_width} does not split into clip.text_heads={k.text_heads}")
    if k.max_length < 0 or k.retrieval_examples < 5:
        raise ValueError(f"config fields clip.max_length={k.max_length} must be >= 0 (0: the longest caption's) and "
                         f"clip.retrieval_examples={k.retrieval_examples} >= 5 (recall@5)")
    if c.data.channels != 1 or c.data.image_size != 28:
        raise ValueError("config: captions are measured on 28×28 one-channel images (data.image_size=28, "
                         "data.channels=1)")


def make_clip(c: ml_collections.ConfigDict, tokenizer: Tokenizer) -> CLIP:
    k = c.clip
    return CLIP(vocab_size=tokenizer.vocab_size, max_length=tokenizer.max_length, embed_dim=k.embed_dim,
                image_features=tuple(k.image_features), text_width=k.text_width, text_layers=k.text_layers,
                text_heads=k.text_heads, noise_aware=k.noise_aware)


def init_params(c: ml_collections.ConfigDict, model: CLIP, key):
    x = jnp.zeros((1, c.data.image_size, c.data.image_size, c.data.channels))
    t = (jnp.zeros((1,), jnp.int32),) if c.clip.noise_aware else ()
    return model.init(key, x, jnp.zeros((1, model.max_length), jnp.int32), *t)["params"]


def run_tokenizer(c: ml_collections.ConfigDict, workdir: Path, train: datasets.Split) -> tuple[Tokenizer, list]:
    """(tokenizer, every template's caption of every training image [N][K]). The vocabulary is the
    training captions' words and the class prompts'; it is written to ``<workdir>/tokenizer.json``,
    and a resumed run whose data would give another is refused."""
    candidates = captions.candidate_captions(c.clip.domain, train.images, train.labels)
    texts = [t for row in candidates for t in row] + captions.class_prompts(c.clip.domain)
    tokenizer = build_tokenizer(texts, c.clip.max_length)
    path = workdir / TOKENIZER_FILE
    if path.exists() and Tokenizer.load(path) != tokenizer:
        raise ValueError(f"{path} holds another vocabulary than this config's data gives: the run was made with "
                         "other data or clip settings; use a new --workdir")
    if jax.process_index() == 0:
        tokenizer.save(path)
    return tokenizer, candidates


def _in_chunks(fn, rows: np.ndarray, mesh, chunk: int = 256) -> np.ndarray:
    """``fn(rows sharded over data, offset)`` on ``chunk`` rows at a time, gathered: [N, ...]."""
    out = []
    for i in range(0, len(rows), chunk):
        part = rows[i:i + chunk]
        out.append(parallel.gather(fn(parallel.pad_to_devices(part, mesh), i))[:len(part)])
    return np.concatenate(out)


def embed_images(model: CLIP, params, images: np.ndarray, mesh, *, schedule=None, timestep=None) -> np.ndarray:
    """Image embeddings [N, E] of uint8 ``images``; a noise-aware model's of x_t at ``timestep``
    (noise seeded by the row offset, so every evaluation sees the same x_t)."""
    rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)

    @partial(jax.jit, in_shardings=(rep, dat, rep))
    def image_fn(params, x, key):
        if timestep is None:
            return model.apply({"params": params}, x, method=CLIP.encode_image)
        t = jnp.full((x.shape[0],), timestep, jnp.int32)
        x_t = gaussian.q_sample(schedule, x, t, jax.random.normal(key, x.shape))
        return model.apply({"params": params}, x_t, t, method=CLIP.encode_image)

    return _in_chunks(lambda x, i: image_fn(params, x, jax.random.key(i)), datasets.to_model_range(images), mesh)


def embed_texts(model: CLIP, params, tokens: np.ndarray, mesh) -> np.ndarray:
    """Text embeddings [N, E] of token ids int [N, L]."""
    rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)
    text_fn = jax.jit(lambda p, tok: model.apply({"params": p}, tok, method=CLIP.encode_text), in_shardings=(rep, dat))
    return _in_chunks(lambda tok, i: text_fn(params, tok), tokens, mesh)


def evaluate(c: ml_collections.ConfigDict, model: CLIP, params, heldout: datasets.Split, tokenizer: Tokenizer,
             mesh, timestep: Optional[int] = None) -> dict:
    """Zero-shot class accuracy on every held-out image ("the digit k" per class, the most similar
    prompt's class) and recall@1/@5 of retrieval both ways among the first ``clip.retrieval_examples``
    held-out images and their captions (drawn with ``seed``; identical captions count as one)."""
    domain = c.clip.domain
    schedule = common.make_schedule(c) if timestep is not None else None
    image_emb = contrastive.normalize(embed_images(model, params, heldout.images, mesh, schedule=schedule,
                                                   timestep=timestep))
    prompts = contrastive.normalize(embed_texts(model, params, tokenizer.encode(captions.class_prompts(domain)), mesh))
    n = min(len(heldout), c.clip.retrieval_examples)
    texts = captions.captions(domain, heldout.images[:n], heldout.labels[:n], seed=c.seed)
    tokens = tokenizer.encode(texts)
    text_emb = contrastive.normalize(embed_texts(model, params, tokens, mesh))
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
    workdir, mesh = trainer.prepare_run(config, workdir)
    train, heldout = common.load_data(config, labels_used=True)
    tokenizer, candidates = run_tokenizer(config, workdir, train)
    caption_tokens = tokenizer.encode([t for row in candidates for t in row]).reshape(len(train), len(candidates[0]), -1)
    # The trainer's batches carry a split's labels: here each image's K captions as token ids.
    batches = trainer.training_batches(config, dataclasses.replace(train, labels=caption_tokens))
    model = make_clip(config, tokenizer)
    schedule = common.make_schedule(config) if config.clip.noise_aware else None
    tx = common.make_optimizer(config)
    init = lambda k: training.create_train_state(k, init_params(config, model, k), tx, 1)
    state, start, ckpt = trainer.restore_or_init(config, workdir, init, mesh, fall_back=fall_back)
    step_fn = trainer.jit_step(partial(contrastive.contrastive_step, apply_fn=model.apply, tx=tx,
                                       ema_decay=config.ema.decay, ema_warmup=config.ema.warmup, schedule=schedule),
                               state, mesh)
    state = trainer.run_loop(config, workdir, state, start, ckpt, step_fn, batches, mesh, desc="clip")
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


def load_clip(workdir, step: Optional[int] = None) -> tuple[CLIP, dict, Tokenizer, ml_collections.ConfigDict]:
    """(model, EMA parameters, tokenizer, config) of a run written by ``experiments.train_clip``."""
    config = runs.load_config(workdir)
    validate(config)
    tokenizer = Tokenizer.load(Path(workdir) / TOKENIZER_FILE)
    model = make_clip(config, tokenizer)
    abstract = jax.eval_shape(partial(init_params, config, model), jax.random.key(0))
    state, _ = runs.restore_partial(workdir, {"ema_params": runs.replicated_like(abstract)}, config, step, "train_clip")
    return model, state["ema_params"], tokenizer, config
