"""A CLIP run (``experiments.train_clip``) read back: its ``clip`` settings checked, its model built
and its EMA parameters restored (``load_clip``), or held frozen inside another model as host copies
(``load_frozen``: the text tower a U-Net reads, unCLIP's towers, CLIP guidance's); images and
token ids embedded by it in sharded chunks (``embed_images``, ``embed_texts``). It builds on no
entry point's glue (``experiments.build`` builds on it)."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion import gaussian, parallel
from diffusion.data import datasets
from diffusion.text import captions
from diffusion.text.clip import CLIP
from diffusion.text.tokenizer import Tokenizer, TOKENIZER_FILE
from experiments import runs


def validate(c: ml_collections.ConfigDict):
    """Raise ValueError naming the first impossible ``clip`` setting (the rest of the config is
    checked by ``build.validate``)."""
    if "clip" not in c:
        raise ValueError("config has no clip section: start from configs/text/clip_mnist.py")
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


def check_run(clip_run, name: str = "", why: str = "", clip_config: str = "configs/text/clip_mnist.py"
              ) -> ml_collections.ConfigDict:
    """The saved config of the CLIP run ``clip_run``, refused when it is none: no config.json and
    tokenizer there, or a config without a ``clip`` section. ``name``: the field or flag that named it
    (default ``model.clip_run``); ``why``: what reads it; ``clip_config``: the config to train one with."""
    name = name or f"config field model.clip_run={clip_run!r}"
    where = Path(clip_run or ".")
    if not clip_run or not (where / "config.json").exists() or not (where / TOKENIZER_FILE).exists():
        raise ValueError(f"{name} is not a CLIP run (no config.json and {TOKENIZER_FILE} there){why}: train one first "
                         f"with python -m experiments.train_clip --config {clip_config} --workdir "
                         f"{clip_run or 'runs/clip_mnist'}")
    config = runs.load_config(where)
    if "clip" not in config:
        raise ValueError(f"{name} is not a CLIP run (its config has no clip section): give an experiments.train_clip "
                         "workdir")
    return config


def make_clip(c: ml_collections.ConfigDict, tokenizer: Tokenizer) -> CLIP:
    k = c.clip
    return CLIP(vocab_size=tokenizer.vocab_size, max_length=tokenizer.max_length, embed_dim=k.embed_dim,
                image_features=tuple(k.image_features), text_width=k.text_width, text_layers=k.text_layers,
                text_heads=k.text_heads, noise_aware=k.noise_aware)


def init_params(c: ml_collections.ConfigDict, model: CLIP, key):
    x = jnp.zeros((1, c.data.image_size, c.data.image_size, c.data.channels))
    t = (jnp.zeros((1,), jnp.int32),) if c.clip.noise_aware else ()
    return model.init(key, x, jnp.zeros((1, model.max_length), jnp.int32), *t)["params"]


def load_clip(workdir, step: Optional[int] = None) -> tuple[CLIP, dict, Tokenizer, ml_collections.ConfigDict]:
    """(model, EMA parameters, tokenizer, config) of a run written by ``experiments.train_clip``."""
    config = runs.load_config(workdir)
    validate(config)
    tokenizer = Tokenizer.load(Path(workdir) / TOKENIZER_FILE)
    model = make_clip(config, tokenizer)
    abstract = jax.eval_shape(partial(init_params, config, model), jax.random.key(0))
    state, _ = runs.restore_partial(workdir, {"ema_params": runs.replicated_like(abstract)}, config, step, "train_clip")
    return model, state["ema_params"], tokenizer, config


def load_frozen(workdir) -> tuple[CLIP, dict, Tokenizer, ml_collections.ConfigDict]:
    """``load_clip`` of the latest checkpoint, its parameters as host copies (``runs.host_copy``): a
    model that holds them frozen closes over them as constants in every compiled step."""
    model, params, tokenizer, config = load_clip(workdir)
    return model, runs.host_copy(params), tokenizer, config


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
