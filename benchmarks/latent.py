"""Latent diffusion's costs on this machine, side by side in one run (Rombach et al. 2022, §4.1): each
of the latent_diffusion study's autoencoders encoding and decoding (images/s), and its pixel and
latent U-Nets' compiled train step and DDIM-50 sampling (images/s; a latent model's samples decoded
to images, as a user receives them). The train rates are what configs/studies/latent_diffusion.py's
STEPS_PER_S turns into equal wall-clock.

python -m benchmarks.latent [--seconds 3] [--batch 64] [--models pixel,kl_f2,kl_f4,vq_f4] [--tiny]

The weights are random (a rate does not depend on them); each row compiles its own programs and
reports the median of three windows. Run it on an otherwise idle machine: rows measured side by side
in one run compare; the shared host's speed moves between days. ``--tiny`` shrinks every network
and window to check that the script runs (the tests use it).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax
import numpy as np

from benchmarks.run import compiled_train_step, median_rate, train_rate, trajectory
from configs.studies import latent_diffusion
from diffusion import xla_flags
from experiments import build
from experiments.latent import autoencoder_runs
from experiments.studies import plan

SAMPLER, SAMPLE_STEPS = "ddim", 50


def shrink(config, first_stage_config: bool):
    """``config`` with a tiny network (``--tiny``)."""
    if first_stage_config:
        config.first_stage.base_channels, config.first_stage.norm_groups = 8, 4
    else:
        config.model.base_channels, config.model.norm_groups, config.model.num_res_blocks = 8, 4, 1
    return config


def study_configs(workdir: Path, tiny: bool) -> tuple[dict, dict]:
    """({model: its config}, {autoencoder: its config}) of the latent_diffusion study at its default
    scale, each autoencoder's config.json written to its planned workdir (where a latent config
    reads its latent shape), nothing trained."""
    study = plan.make_plan(latent_diffusion, workdir)
    autoencoders = {n: shrink(j.config, True) if tiny else j.config for n, j in study.autoencoders.items()}
    for name, config in autoencoders.items():
        path = study.autoencoders[name].workdir
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=list))
    return {n: shrink(j.config, False) if tiny else j.config for n, j in study.models.items()}, autoencoders


def random_autoencoder(config):
    """(module, randomly initialised variables) of ``config``'s autoencoder."""
    params, model_state = autoencoder_runs.init_variables(config, jax.random.key(0))
    return autoencoder_runs.make_autoencoder(config), {"params": params["autoencoder"], **model_state}


def autoencoder_rates(config, batch: int, seconds: float) -> dict:
    """Encode and decode images/s of ``config``'s autoencoder (the KL model's mean; the VQ model
    quantising in its decoder) on random images."""
    model, variables = random_autoencoder(config)
    x = jax.random.uniform(jax.random.key(1), (batch,) + build.data_shape(config), minval=-1, maxval=1)
    encode = jax.jit(lambda v, x: model.apply(v, x, None, method="encode"))
    decode = jax.jit(lambda v, z: model.apply(v, z, method="decode"))
    z = encode(variables, x)
    return {"encode_img_s": median_rate(lambda: encode(variables, x).block_until_ready(), batch, 3, seconds),
            "decode_img_s": median_rate(lambda: decode(variables, z).block_until_ready(), batch, 3, seconds),
            "latent_shape": tuple(z.shape[1:])}


def diffusion_rates(config, autoencoder, batch: int, seconds: float) -> dict:
    """Train images/s and steps/s of ``config``'s compiled train step, and DDIM-50 images/s of its
    trajectory followed, for a latent model, by its autoencoder's decode (``autoencoder``'s config)."""
    compiled, state, data, _, _ = compiled_train_step(config, batch)
    rate, state = train_rate(compiled, state, data, windows=3, seconds=seconds)
    model, schedule = build.make_model(config), build.make_schedule(config)
    draw = trajectory(config, model, schedule, SAMPLER, SAMPLE_STEPS)
    if autoencoder is not None:
        ae, variables = random_autoencoder(autoencoder)
        latent_draw = draw
        draw = jax.jit(lambda p, x_T: ae.apply(variables, latent_draw(p, x_T), method="decode"))
    x_T = jax.random.normal(jax.random.key(0), (batch,) + build.data_shape(config))
    sample = median_rate(lambda: draw(state.ema_params, x_T).block_until_ready(), batch, 3, seconds)
    return {"train_img_s": rate, "train_steps_s": rate / batch, "sample_img_s": sample,
            "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="Seconds per timing window.")
    parser.add_argument("--batch", type=int, default=64, help="Batch of the train step, the sampler and the autoencoders.")
    parser.add_argument("--models", default=",".join(latent_diffusion.MODELS), help="Study models, comma-separated.")
    parser.add_argument("--tiny", action="store_true", help="Tiny networks and windows: check the script runs.")
    args = parser.parse_args(argv)
    xla_flags.use_xla_cpu_convolutions()   # as the entry points do, before the backend starts
    names = args.models.split(",")
    unknown = sorted(set(names) - set(latent_diffusion.MODELS))
    if unknown:
        parser.error(f"--models {','.join(unknown)}: not a latent_diffusion study model; choose from "
                     f"{','.join(latent_diffusion.MODELS)}")
    seconds = 0.05 if args.tiny else args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        models, autoencoders = study_configs(Path(tmp), args.tiny)
        print(f"Batch {args.batch}, windows of {seconds:g} s, random weights.\n")
        print("| autoencoder | latent (h × w × c) | encode images/s | decode images/s |")
        print("| --- | --- | --- | --- |")
        for name in [n for n in names if n in autoencoders]:
            row = autoencoder_rates(autoencoders[name], args.batch, seconds)
            print(f"| {name} | {' × '.join(map(str, row['latent_shape']))} | {row['encode_img_s']:,.0f} | "
                  f"{row['decode_img_s']:,.0f} |", flush=True)
        print()
        print(f"| diffusion model | U-Net parameters | train images/s | train steps/s | {SAMPLER.upper()}-{SAMPLE_STEPS} "
              "images/s (decoded) |")
        print("| --- | --- | --- | --- | --- |")
        for name in names:
            row = diffusion_rates(models[name], autoencoders.get(name), args.batch, seconds)
            print(f"| {name} | {row['params']:,} | {row['train_img_s']:,.0f} | {row['train_steps_s']:.2f} | "
                  f"{row['sample_img_s']:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
