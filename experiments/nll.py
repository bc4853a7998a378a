"""Negative log-likelihood in bits/dim of a run's checkpoint on held-out images, as papers report
it: the variational bound with its per-step terms (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021,
Fig. 2) or the probability-flow ODE's likelihood (Song et al. 2021, §D.2), each measured once per
checkpoint and kept beside its samples (``record``); ``over_heldout`` and ``checkpoint_record``
serve any per-image held-out measure (seed 004's objective, ``experiments.sddpm.diagnostics``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from diffusion import likelihood, parallel
from diffusion.data import datasets
from diffusion.sddpm import process
from experiments import build


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


def bound_bits_per_dim(run, mesh, heldout, num: int, batch: int = 32, seed: int = 0) -> dict:
    """Mean and standard error of the variational bound (bits/dim) on ``num`` held-out images,
    with the mean of each term (prior, decoder L_0, Σ L_t) and, per step t = 1 … T, the mean term
    ``per_step_bpd`` (index 0 is L_0) and ‖ε − ε̂‖² ``per_step_eps_mse`` (Nichol & Dhariwal 2021, Fig. 2)."""
    out = over_heldout(bound_fn(run.config, run.model, run.schedule), run, mesh, heldout, num, batch, seed, "nll")
    per_step = out["terms"].mean(0)
    return dict(mean_and_stderr(out["total"]), method="vlb", prior=float(out["prior"].mean()),
                decoder_L0=float(per_step[0]), sum_Lt=float(per_step[1:].sum()),
                per_step_bpd=per_step.tolist(), per_step_eps_mse=out["mse"].mean(0).tolist())


ODE_TOLERANCE = 1e-5     # rtol = atol of the adaptive solver (Song et al. 2021 use 1e-5)


def ode_bits_per_dim(run, mesh, heldout, num: int, batch: int = 32, seed: int = 0,
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


METHODS = {"vlb": ("nll.json", bound_bits_per_dim), "ode": ("nll_ode.json", ode_bits_per_dim)}


def check_method(method: str, config, ode_ignores_learned_variance: bool = False):
    """Refuse an NLL method that does not exist, or, unless told to ignore it, the ODE likelihood
    of a learned-variance model."""
    if method not in METHODS:
        raise ValueError(f"unknown NLL method {method!r}; choose from {sorted(METHODS)}")
    if method == "ode" and config.diffusion.variance.startswith("learned") and not ode_ignores_learned_variance:
        raise ValueError(
            f"--nll ode on a model with diffusion.variance={config.diffusion.variance!r}: the probability-flow ODE "
            "uses only the ε̂ channels, not the reverse variance Σ_θ this model learned and its variational bound "
            "uses, so the two NLLs would describe different models; measure --nll vlb, or pass "
            "--ode_ignores_learned_variance to take the ODE of the ε̂ channels anyway")


def record(run, mesh, heldout, num: int, out: Path, seed: int = 0, method: str = "vlb") -> dict:
    """The NLL by ``method`` (``METHODS``: "vlb" the variational bound, "ode" the probability-flow
    likelihood) of the run's checkpoint on ``num`` held-out images with its ``step``, one record per
    checkpoint and method in ``out/nll.json`` or ``out/nll_ode.json``: read back when it is of this
    step and count (and, for the bound, has the per-step terms), measured and written otherwise. The
    noise ``seed`` is not matched: it moves the estimate within its standard error, not what is measured."""
    filename, measure_nll = METHODS[method]
    return checkpoint_record(Path(out) / filename, run, min(num, len(heldout)),
                             lambda: measure_nll(run, mesh, heldout, num, seed=seed),
                             complete=lambda kept: "per_step_bpd" in kept or method != "vlb")


def checkpoint_record(path: Path, run, num: int, measure: Callable[[], dict],
                      complete: Callable[[dict], bool] = lambda kept: True) -> dict:
    """The record at ``path`` when it is of the run's checkpoint step and ``num`` images (and
    ``complete``), else ``measure()`` with the ``step``, written there: one record per checkpoint."""
    if path.exists():
        kept = json.loads(path.read_text())
        if kept.get("step") == run.step and kept.get("num") == num and complete(kept):
            return kept
    fresh = dict(measure(), step=run.step)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fresh, indent=2))
    return fresh


def records(run, mesh, heldout, num: int, out: Path, methods=("vlb",), seed: int = 0) -> dict:
    """``{method: record}`` of each of ``methods`` on the first ``num`` held-out images (``record``),
    or {} for a model without the bound (``has_bound``); a latent run's bound is of what the model
    diffuses, its scaled held-out latents, in bits per latent dimension."""
    if not has_bound(run.config):
        return {}
    if run.latent is not None:
        heldout = parallel.encode_split(run.latent.encode, heldout.head(num), mesh)
    return {method: record(run, mesh, heldout, num, out, seed=seed, method=method) for method in methods}
