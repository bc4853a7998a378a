"""The training loop behind ``experiments.train_autoencoder``: ``experiments.loop``'s run (checks,
checkpoints, resume, logs, progress bar, NaN guard) around ``autoencoder_step.autoencoder_step``,
with held-out reconstructions measured at every grid step.

At each ``train.sample_every`` step (and the last) the EMA autoencoder reconstructs the first
``first_stage_train.eval_examples`` held-out images (z = the mean, or z_e quantised): a PNG of
originals over reconstructions in ``<workdir>/reconstructions/``, and in
``<workdir>/reconstruction.json`` per step the PSNR (dB, mean over images on uint8 pixels, ± its
standard error), the reconstruction FID against the same originals (the project's feature
classifier for 28×28 single-channel data, Inception-v3 given its weights for other data), and for
VQ the codebook's perplexity and dead codes over those images.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Optional

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from diffusion import metrics, parallel, visualize
from diffusion.data import datasets
from diffusion.latent import autoencoder_losses, autoencoder_step
from experiments import build, loop, scoring
from experiments.latent import autoencoder_runs

EVAL_BATCH = 256
GRID_COLUMNS = 8


def feature_network(config, mesh, classifier_weights: Optional[str], inception_weights: Optional[str]):
    """(name, feature fn) for the rFID, or None with the reason printed when there is none: 28×28
    single-channel data use the project's classifier, others Inception-v3, which needs its weights."""
    if scoring.uses_inception(config) and not inception_weights:
        print("reconstruction FID skipped: data other than 28×28×1 need Inception-v3 (--inception_weights)")
        return None
    return scoring.make_feature_fn(config, mesh, "auto", classifier_weights, inception_weights)


def interleaved_grid(originals: np.ndarray, reconstructions: np.ndarray, columns: int = GRID_COLUMNS) -> np.ndarray:
    """uint8 [N, H, W, C] pairs as one picture: a row of originals over the row of their reconstructions."""
    n = len(originals) - len(originals) % columns or len(originals)
    columns = min(columns, n)
    rows = [part for i in range(0, n, columns) for part in (originals[i:i + columns], reconstructions[i:i + columns])]
    return visualize.image_grid(np.concatenate(rows), ncols=columns)


class Reconstructions:
    """``on_sample`` for ``loop.run_loop``: grid and measurements of the held-out reconstructions."""

    def __init__(self, config: ml_collections.ConfigDict, model, heldout, mesh, workdir: Path, feature=None):
        self.config, self.mesh, self.workdir, self.feature = config, mesh, workdir, feature
        self.images = heldout.images[:config.first_stage_train.eval_examples]
        self.vq = config.first_stage.kind == "vq"
        self.codebook_size = config.first_stage.codebook_size
        rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)

        def reconstruct(variables, x):
            x_rec, aux = model.apply(variables, x)       # no key: z is the mean (KL) / z_e quantised (VQ)
            return (x_rec, aux["indices"]) if self.vq else (x_rec,)
        self.reconstruct = jax.jit(reconstruct, in_shardings=(rep, dat))
        self.reference = None

    def _reconstructions(self, variables) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(uint8 reconstructions, VQ code indices or None) of the evaluation images."""
        recs, *codes = parallel.map_images(lambda x: self.reconstruct(variables, x), self.mesh, EVAL_BATCH)(self.images)
        return datasets.to_uint8(recs), codes[0] if codes else None

    def measure(self, step: int, variables) -> dict:
        """The record of ``step``: PSNR, rFID (when there is a feature network), VQ codebook usage."""
        recs, codes = self._reconstructions(variables)
        per_image = metrics.psnr(recs, self.images)
        record = {"num": int(len(recs)), "psnr": float(per_image.mean()),
                  "psnr_se": float(per_image.std(ddof=1) / np.sqrt(len(per_image)))}
        if self.feature is not None:
            name, feature_fn = self.feature
            if self.reference is None:
                feats = feature_fn(self.images)[0]
                self.reference = metrics.FeatureStats(feats.shape[1]).update(feats)
            feats = feature_fn(recs)[0]
            record.update(rfid=metrics.fid_from_stats(metrics.FeatureStats(feats.shape[1]).update(feats), self.reference),
                          rfid_se=metrics.fid_standard_error(feats, self.reference), features=name)
        if self.vq:
            perplexity, dead = autoencoder_losses.codebook_usage(codes, self.codebook_size)
            record.update(perplexity=float(perplexity), dead_codes=int(dead), codebook_size=self.codebook_size)
        if jax.process_index() == 0:
            n = min(self.config.first_stage_train.grid_images, len(recs))
            visualize.save_png(interleaved_grid(self.images[:n], recs[:n]),
                               self.workdir / "reconstructions" / f"step_{step:07d}.png", scale=2)
        return record

    def __call__(self, step: int, state) -> None:
        record = self.measure(step, {"params": state.ema_params["autoencoder"], **state.model_state})
        if jax.process_index() != 0:
            return None
        path = self.workdir / "reconstruction.json"
        records = json.loads(path.read_text()) if path.exists() else {}
        records[str(step)] = record
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dict(sorted(records.items(), key=lambda kv: int(kv[0]))), indent=2))
        tmp.replace(path)
        text = ", ".join([f"PSNR {record['psnr']:.2f} dB"] + ([f"rFID {record['rfid']:.2f}"] if "rfid" in record else [])
                         + ([f"perplexity {record['perplexity']:.1f}, {record['dead_codes']} dead codes"]
                            if self.vq else []))
        tqdm.write(f"step {step}: reconstructions in {self.workdir / 'reconstructions'} ({text})")
        return None


def train_autoencoder(config: ml_collections.ConfigDict, workdir, *, fall_back: bool = False,
                      classifier_weights: Optional[str] = None, inception_weights: Optional[str] = None
                      ) -> autoencoder_step.AutoencoderState:
    """Train (or resume) the first-stage autoencoder described by ``config`` in ``workdir``; returns
    the final state. ``fall_back``: resume from the newest checkpoint that verifies when the latest
    is corrupt. ``classifier_weights`` / ``inception_weights``: the rFID's feature network."""
    autoencoder_runs.validate(config)
    workdir, mesh = loop.prepare_run(config, workdir)
    train_split, heldout = build.load_data(config)
    if len(heldout) < 2:
        raise ValueError(f"data {config.data.source!r} leaves {len(heldout)} held-out images: the "
                         "reconstructions are measured on >= 2, so raise data.holdout_fraction")
    batches = loop.training_batches(config, train_split)
    feature = feature_network(config, mesh, classifier_weights, inception_weights)
    model, disc = autoencoder_runs.make_autoencoder(config), autoencoder_runs.make_discriminator(config)
    tx = autoencoder_runs.make_optimizer(config)
    state, start, ckpt = loop.restore_or_init(config, workdir, lambda k: autoencoder_runs.init_state(config, k, tx),
                                                 mesh, fall_back=fall_back)
    step_fn = loop.jit_step(partial(autoencoder_step.autoencoder_step, model=model, tx=tx,
                                       settings=autoencoder_runs.loss_settings(config), discriminator=disc,
                                       ema_decay=config.ema.decay, ema_warmup=config.ema.warmup,
                                       codebook_decay=config.first_stage_train.codebook_decay), state, mesh)
    on_sample = Reconstructions(config, model, heldout, mesh, workdir, feature)
    return loop.run_loop(config, workdir, state, start, ckpt, step_fn, batches, mesh, on_sample,
                            desc="autoencoder")
