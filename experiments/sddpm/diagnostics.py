"""Seed 004's own measurements of a trained run: its held-out objective Σ_t E[−log q_r(x_{t−1} | x_t)]
and its encode-then-decode through the forward process."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import gaussian, losses, parallel, samplers
from diffusion.sddpm import process
from experiments import build, nll
from experiments.inference import Run


def sddpm_objective(run, mesh, heldout, num: int, batch: int = 32, seed: int = 0, identity: bool = False) -> dict:
    """Seed 004's objective Σ_t E[−log q_r(x_{t−1} | x_t)] (``losses.sddpm_objective``, nats/dim) of
    the run's reverse model on ``num`` held-out images: its mean, standard error and mean term per
    step ``per_step`` (index 0: −log q_r(x_0 | x_1)). With ``identity``, that of ε_r = 0 and σ_t² = β_t
    on the run's schedule instead: a reverse model that has learned nothing, the reference."""
    config = run.config

    def objective(params, x, labels, key):
        if identity:
            return losses.sddpm_objective(lambda x_t, _: jnp.zeros_like(x_t), run.schedule, x, key,
                                          prediction=process.RESIDUAL, variance="fixed_large")
        return losses.sddpm_objective(build.make_denoiser(run.model, params), run.schedule, x, key,
                                      cond=build.conditioning(config, labels), **build.output_kwargs(config))
    out = nll.over_heldout(objective, run, mesh, heldout, num, batch, seed, "sddpm objective")
    return dict(nll.mean_and_stderr(out["total"], "nats_per_dim"), per_step=out["terms"].mean(0).tolist())


def sddpm_objective_record(run, mesh, heldout, num: int, out: Path, seed: int = 0) -> dict:
    """``sddpm_objective`` of the run's checkpoint, one record per checkpoint in ``out/sddpm_objective.json``."""
    return nll.checkpoint_record(Path(out) / "sddpm_objective.json", run, min(num, len(heldout)),
                                 lambda: sddpm_objective(run, mesh, heldout, num, seed=seed))


def forward_encode_decode(run: Run, mesh, x0: np.ndarray, labels: np.ndarray, depths, sampler: str, seed: int = 0):
    """(encodings, decodes), each [len(depths), N, ...]: seed 004's encode-then-decode of images x0
    [N, ...] in [−1, 1], noised by the forward process through k steps (q(x_k | x_0), schedule index
    k − 1) for each k of ``depths`` and decoded by ``sampler``'s steps k − 1 … 0 of the run's model
    on its full schedule (the same noise for every model of a run's shape)."""
    config, T = run.config, run.schedule.num_steps
    if not all(1 <= k <= T for k in depths):
        raise ValueError(f"encoding depths {tuple(depths)} must lie in 1 … T = {T}")
    step, schedule, _ = build.make_sampler(config, run.schedule, sampler=sampler, steps=T)

    def encode_and_decode(params, x, labels):
        model_fn, cond = build.make_denoiser(run.model, params), build.conditioning(config, labels)
        encoded, decoded = [], []
        for i, k in enumerate(depths):
            k_noise, k_steps = jax.random.split(jax.random.fold_in(jax.random.key(seed), i))
            t = jnp.full((x.shape[0],), k - 1, jnp.int32)
            encoded.append(gaussian.q_sample(schedule, x, t, jax.random.normal(k_noise, x.shape, x.dtype)))
            decoded.append(samplers.sample(step, model_fn, schedule, encoded[-1], k_steps,
                                           timesteps=jnp.arange(k - 1, -1, -1), cond=cond))
        return tuple(encoded), tuple(decoded)

    dat = parallel.data_sharded(mesh)
    encoded, decoded = jax.jit(encode_and_decode, in_shardings=(parallel.replicated(mesh), dat, dat))(
        run.params, parallel.pad_to_devices(x0, mesh), parallel.pad_to_devices(labels, mesh))
    return (np.stack([parallel.gather(e)[:len(x0)] for e in encoded]),
            np.stack([parallel.gather(d)[:len(x0)] for d in decoded]))
