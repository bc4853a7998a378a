"""Draw samples from a trained run: ``python -m experiments.sample --workdir runs/mnist --sampler ddim --steps 50``.

Writes ``<out>/<tag>.png`` (a grid) and ``<out>/<tag>.npz`` (the samples, uint8). Options:
``--trajectory`` (x_t and predicted x_0 over the reverse process), ``--interpolate`` (spherical
interpolation between two DDIM latents), ``--reconstruct`` (DDIM inversion of held-out images
and decoding back); ``--guidance classifier_free|classifier --scale w`` with ``--label``. A latent-
diffusion run's samples, trajectory and interpolations are decoded to images by its autoencoder.
An official DDPM checkpoint in diffusers' layout loads with ``--config configs/cifar10_ddpm.py
--diffusers_weights <file>`` in place of ``--workdir``'s checkpoint. A cascade (Ho et al. 2021):
``--cascade runs/base14,runs/sr14to28 --aug_level 100 [--truncated] [--scales 2,1]`` writes each
stage's grid and base | upsampled | final side by side (``experiments.cascade.chain``).

A text-conditioned run (configs/text/text_mnist.py) draws ``--num`` samples of each ``--prompt "a thick
seven"`` (repeatable) or each line of ``--prompts FILE`` (blank lines skipped), guided with
``--guidance classifier_free --scale w``; the grid shows each prompt above its samples and
``<tag>.npz`` holds each sample's prompt. Refused before any work: no prompt for such a run, a
prompt for a run that reads no text, words outside the run's vocabulary (named), a prompt longer
than its context. ``--prompt ''`` is the null caption: a draw from the unconditional model that
caption dropout trained (refused for a run trained without it).

``--guidance clip --clip_run runs/clip_mnist_noisy --scale w --prompt "a thick seven"`` is GLIDE's
CLIP guidance (``guidance.clip``), for a text-conditioned run (given the prompt too) or an
unconditional one (``experiments.text.clip_guidance`` refuses a CLIP that cannot guide the run).

unCLIP (Ramesh et al. 2022): ``--unclip runs/unclip_prior,runs/unclip_decoder --prompt "a thick seven"
[--scales 1,3]`` draws each prompt's CLIP image embedding with the prior, then ``--num`` images of it
with the decoder (``--scales``: each stage's classifier-free guidance weight); ``--workdir
runs/unclip_decoder --variations <image.png or held-out index> [--scale 3]`` decodes an image's own
CLIP embedding ``--num`` times (``experiments.unclip.generation``). A stage sampled alone is refused.
"""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from diffusion import parallel, samplers, schedules, visualize
from diffusion.data import datasets
from diffusion.models.convert import load_diffusers_unet
from experiments import build, cli, inference
from experiments.cascade import chain
from experiments.latent import autoencoder_runs
from experiments.text import clip_guidance
from experiments.unclip import generation, stage_runs

flags.DEFINE_string("workdir", None, "A training run's workdir (its config and latest EMA checkpoint).")
config_flags.DEFINE_config_file("config", None, "With --diffusers_weights: the config the weights fit.")
flags.DEFINE_string("diffusers_weights", None, "A diffusers UNet2DModel .safetensors/.bin to sample from.")
flags.DEFINE_string("out", None, "Output directory (default <workdir>/sample).")
flags.DEFINE_enum("sampler", "ddim", list(samplers.SAMPLERS), "Reverse-process sampler.")
flags.DEFINE_integer("steps", 50, "Number of sampling steps (respaced for ddpm/pc).")
flags.DEFINE_enum("spacing", None, list(schedules.SPACING_NAMES), "Which steps to keep: leading (DDIM's), "
                  "trailing (from T − 1), linspace or quad (default: the run's sample.spacing, else the sampler's own).")
flags.DEFINE_float("eta", 0.0, "DDIM η (0 deterministic, 1 DDPM-like).")
flags.DEFINE_enum("clip", None, list(build.CLIPS), "Thresholding of the predicted x_0 "
                  "(default: the run's sample.clip).")
flags.DEFINE_integer("num", 64, "Number of samples.")
flags.DEFINE_integer("batch", 64, "Samples per compiled batch (a multiple of the device count).")
flags.DEFINE_integer("seed", 0, "Noise seed.")
flags.DEFINE_enum("guidance", "", list(inference.GUIDANCE), "Guidance kind.")
flags.DEFINE_float("scale", 0.0, "Guidance weight w.")
flags.DEFINE_integer("label", -1, "Class to draw (−1: classes in turn).")
flags.DEFINE_multi_string("prompt", None, "A text-conditioned run: a prompt to draw --num samples of (repeatable); "
                          "'' is the null caption (the unconditional model).")
flags.DEFINE_string("prompts", None, "A text-conditioned run: a file of prompts, one per line (blank lines skipped).")
flags.DEFINE_string("classifier_workdir", None, "A noisy classifier's workdir, for --guidance classifier.")
flags.DEFINE_string("clip_run", None, "A noise-aware CLIP's workdir (configs/text/clip_mnist_noisy.py), for --guidance clip.")
flags.DEFINE_bool("trajectory", False, "Also write the reverse process of 8 samples as a strip.")
flags.DEFINE_bool("interpolate", False, "Write spherical interpolations between pairs of DDIM latents.")
flags.DEFINE_bool("reconstruct", False, "Invert held-out images with DDIM and decode them back.")
flags.DEFINE_list("cascade", None, "Workdirs of a cascade (Ho et al. 2021), base first (or the word heldout: the held-out "
                  "images at the first stage's low resolution), then each super-resolution stage: writes each "
                  "stage's grid and base | upsampled | final side by side (replaces --workdir).")
flags.DEFINE_list("aug_level", None, "--cascade: the level s each super-resolution stage is conditioned at, one for "
                  "all or one per stage (default: each stage's cascade.aug_level).")
flags.DEFINE_bool("truncated", None, "--cascade: stop each lower stage's reverse process at s (truncated "
                  "conditioning augmentation) instead of corrupting its output to s (default: the stages' cascade.truncated).")
flags.DEFINE_list("scales", ["0"], "--cascade, --unclip: classifier-free guidance weight per stage (one for all, or "
                  "one per stage; 0 unguided).")
flags.DEFINE_list("unclip", None, "unCLIP (Ramesh et al. 2022): the prior's workdir, then the decoder's; each --prompt "
                  "→ the prior's CLIP image embedding → --num decoder samples (replaces --workdir).")
flags.DEFINE_string("variations", None, "With --workdir of an unCLIP decoder: a PNG image, or the index of a held-out "
                    "image, whose CLIP embedding the decoder draws --num samples of (image variations).")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Request:
    """What to draw, read once from the flags: the helpers below take plain values, not FLAGS."""
    sampler: str
    steps: int
    eta: float
    clip: str            # build.CLIPS: "none", "static" or "dynamic"
    spacing: str         # schedules.SPACING_NAMES, or "" for the sampler's own
    num: int
    batch: int
    seed: int
    guidance: str
    scale: float
    label: int


def load(workdir, config, diffusers_weights) -> inference.Run:
    """The run to draw from: a training workdir's EMA weights, or diffusers weights with ``config``."""
    if diffusers_weights:
        if config is None:
            raise ValueError("--diffusers_weights needs --config: the config whose U-Net the weights fit")
        build.validate(config)
        model = build.make_model(config)
        params = load_diffusers_unet(diffusers_weights, model, image_channels=config.data.channels)
        return inference.Run(config, model, build.make_schedule(config), params, step=0)
    if not workdir:
        raise ValueError("give --workdir (a training run) or --config with --diffusers_weights")
    return inference.load_run(workdir)


def write(out: Path, tag: str, pictures: np.ndarray, samples: np.ndarray, ncols=None, **extra):
    if jax.process_index() == 0:
        np.savez(out / f"{tag}.npz", image=samples, **extra)
        path = visualize.save_png(visualize.image_grid(pictures, ncols=ncols), out / f"{tag}.png", scale=2)
        print(f"wrote {path} and {out / (tag + '.npz')}")


def write_trajectory(run, mesh, r: Request, out: Path, tag: str, guides: dict, condition=None):
    """8 samples' x_t (odd rows) and predicted x_0 (even rows) at ~10 points of the reverse process
    (of the first 8 of ``condition``'s rows, e.g. prompts' token ids; default the classes in turn);
    ``guides``: ``build_draw_fn``'s guide arguments."""
    n = parallel.padded_count(8, mesh)
    draw = inference.build_draw_fn(run, mesh, sampler=r.sampler, steps=r.steps, eta=r.eta, clip=r.clip, spacing=r.spacing,
                                  guide=r.guidance, keep_every=max(r.steps // 10, 1), **guides)
    rows = (inference.class_labels(run.config, n, r.label) if condition is None
            else jax.tree.map(lambda a: np.resize(a, (n,) + a.shape[1:]), condition))
    _, frames = draw(run.params, jax.random.key(r.seed), rows, np.float32(r.scale))
    x_t, x0 = parallel.gather(frames["x_t"]), parallel.gather(frames["x0"])     # [F, n, H, W, C]
    rows = np.stack([x_t, x0], axis=2).reshape((x_t.shape[0], 2 * n) + x_t.shape[2:])
    strip = visualize.trajectory_strip(np.clip(rows, -1, 1))
    if jax.process_index() == 0:
        print(f"wrote {visualize.save_png(strip, out / f'{tag}_trajectory.png', scale=2)}")


def write_interpolation(run, mesh, r: Request, out: Path, tag: str, pairs: int = 4, points: int = 9):
    """DDIM (η = 0) decodes of slerp(z0, z1, α) for ``pairs`` pairs of latents, α in [0, 1]."""
    config = run.config
    step, schedule, timesteps = build.make_sampler(config, run.schedule, sampler="ddim", steps=r.steps,
                                                    eta=0.0, clip=r.clip)
    shape = build.data_shape(config)
    k0, k1 = jax.random.split(jax.random.key(r.seed))
    z0, z1 = jax.random.normal(k0, (pairs,) + shape), jax.random.normal(k1, (pairs,) + shape)
    alphas = jnp.linspace(0.0, 1.0, points)
    z = jax.vmap(lambda a: samplers.slerp(z0, z1, a))(alphas).transpose(1, 0, 2, 3, 4).reshape((-1,) + shape)
    z = parallel.pad_to_devices(np.asarray(z), mesh)
    labels = np.resize(np.repeat(inference.class_labels(config, pairs, r.label), points), len(z))
    cond = build.conditioning(config, jnp.asarray(labels))
    fn = jax.jit(lambda p, x: autoencoder_runs.decoded(run.latent, samplers.sample(
                     step, build.make_denoiser(run.model, p), schedule, x, jax.random.key(0), timesteps=timesteps,
                     cond=cond)), in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)))
    images = datasets.to_uint8(parallel.gather(fn(run.params, z))[:pairs * points])
    write(out, f"{tag}_interpolation", images, images, ncols=points, alpha=np.asarray(alphas))


def write_reconstruction(run, mesh, r: Request, out: Path, tag: str, num: int = 16):
    """Held-out images → DDIM latents (fixed-point inversion) → DDIM decodes; rows: real, latent, decoded."""
    _, heldout = build.load_data(run.config)
    num = parallel.padded_count(num, mesh)
    x0 = datasets.to_model_range(heldout.images[:num])
    z, decoded = inference.reconstruct(run, mesh, x0, heldout.labels[:num], r.steps)
    mse = float(np.mean((decoded - x0) ** 2))
    latent_view = np.clip(z / 3, -1, 1)
    rows = np.concatenate([x0, latent_view, np.clip(decoded, -1, 1)])
    write(out, f"{tag}_reconstruction", datasets.to_uint8(rows), datasets.to_uint8(decoded), ncols=num,
          latent=z, mse=mse)
    if jax.process_index() == 0:
        print(f"reconstruction of {num} held-out images with {r.steps} DDIM steps: mean squared error {mse:.2e}")


def write_toy_figure(run, mesh, r: Request, out: Path, tag: str):
    """A 2-D toy run: the data | samples | reverse-trajectory figure and the points as ``<tag>.npz``."""
    draw = inference.build_draw_fn(run, mesh, sampler=r.sampler, steps=r.steps, eta=r.eta, clip=r.clip, spacing=r.spacing,
                                  keep_every=max(r.steps // 20, 1))
    n = parallel.padded_count(r.num, mesh)
    final, frames = draw(run.params, jax.random.key(r.seed), inference.class_labels(run.config, n), np.float32(0))
    final, frames = parallel.gather(final)[:r.num], parallel.gather(frames["x_t"])[:, :r.num]
    train_split, _ = build.load_data(run.config)
    if jax.process_index() == 0:
        np.savez(out / f"{tag}.npz", points=final)
        path = visualize.toy_figure(train_split.images[:r.num], final, frames, out / f"{tag}.png",
                                    title=f"{run.config.data.source}, step {run.step}, {r.sampler} {r.steps}")
        print(f"wrote {path} and {out / (tag + '.npz')}")


def read_prompts(prompt, prompts_file) -> list[str]:
    """The ``--prompt`` values, then each non-blank line of ``--prompts`` (a file that must exist)."""
    prompts = list(prompt or [])
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts={prompts_file}: no such file; give a text file with one prompt per line")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts


def write_prompt_grid(run, draw, mesh, r: Request, out: Path, tag: str, prompts: list[str], condition):
    """``r.num`` samples of each prompt (``condition``: their token ids, or the dict CLIP guidance
    takes, ``r.num`` rows a prompt):
    ``<tag>.png``, each prompt written above its samples, and ``<tag>.npz`` with the samples and
    each one's prompt."""
    images = inference.draw_samples(run, draw, mesh, num=len(prompts) * r.num, batch=r.batch, seed=r.seed, scale=r.scale,
                                   condition=condition)
    inference.write_prompt_grid(out, tag, prompts, images)


def sample_cascade(workdirs, settings: chain.Settings, *, num: int, batch: int, seed: int, label: int, out):
    """Draw ``num`` samples through the cascade and write its pictures (``cascade.write``)."""
    stages, settings = chain.load(workdirs, settings)
    inference.check_label(stages[-1].config, label, "classifier_free" if any(settings.scales) else "")
    mesh = parallel.make_mesh()
    fns = chain.build_draw_fns(stages, mesh, settings)
    outputs = chain.draw(stages, fns, mesh, settings, num=num, batch=batch, seed=seed, label=label)
    chain.write(Path(out or Path(workdirs[-1]) / "sample"), f"{settings.tag}_seed{seed}", outputs)


def sample_unclip(prompts: list[str]):
    """``--unclip`` (prompts through prior and decoder) or ``--variations`` (an image's embedding through
    the decoder), refusing the flags neither reads."""
    unused = [f"--{name}" for name in ("trajectory", "interpolate", "reconstruct", "guidance", "cascade", "config",
                                        "diffusers_weights") if FLAGS[name].value]
    unused += ["--label"] if FLAGS.label != -1 else []
    if FLAGS.unclip and FLAGS.variations is not None:
        unused.append("--variations (give the decoder alone: --workdir <decoder> --variations …)")
    if FLAGS.variations is not None and prompts:
        unused.append("--prompt/--prompts (a variation decodes an image's embedding, without text)")
    if unused:
        raise ValueError(f"--unclip / --variations do not read {', '.join(unused)}: drop them (guidance is "
                         "--scales for --unclip, --scale for --variations)")
    s = generation.Settings(sampler=FLAGS.sampler, steps=FLAGS.steps, eta=FLAGS.eta, clip=FLAGS.clip,
                                 num=FLAGS.num, batch=FLAGS.batch, seed=FLAGS.seed)
    if FLAGS.unclip:
        generation.sample_prompts(FLAGS.unclip, prompts, FLAGS.scales, s, out=FLAGS.out)
        return
    if not FLAGS.workdir:
        raise ValueError("--variations needs --workdir, an unCLIP decoder's")
    generation.sample_variations(inference.load_run(FLAGS.workdir), FLAGS.workdir, FLAGS.variations, FLAGS.scale,
                                      s, out=FLAGS.out)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    build.check_flags_at_least(1, num=FLAGS.num, batch=FLAGS.batch, steps=FLAGS.steps)
    if FLAGS.cascade:
        settings = chain.settings_from_flags(FLAGS.cascade, FLAGS.aug_level, FLAGS.truncated, FLAGS.scales, FLAGS.sampler,
                                    FLAGS.steps, FLAGS.eta)
        return sample_cascade(FLAGS.cascade, settings, num=FLAGS.num, batch=FLAGS.batch, seed=FLAGS.seed,
                              label=FLAGS.label, out=FLAGS.out)
    prompts = read_prompts(FLAGS.prompt, FLAGS.prompts)
    if FLAGS.unclip or FLAGS.variations is not None:
        return sample_unclip(prompts)
    run = load(FLAGS.workdir, FLAGS.config, FLAGS.diffusers_weights)
    check_flags_for(run)
    clip_guide = clip_guidance.load(FLAGS.clip_run, run) if FLAGS.guidance == "clip" else None   # reads its checkpoint
    per_prompt = clip_guidance.prompt_condition(run, clip_guide, prompts)
    sample_run(run, request_from_flags(run), prompts, per_prompt, clip_guide)


def check_flags_for(run):
    """Refuse, before any work, what the flags ask of ``run`` that it cannot do: a stage that is drawn
    only with the others, a CLIP without CLIP guidance, too many steps, an η its sampler lacks, a label
    it cannot take, and pictures it has no meaning for (a text run's interpolation and
    reconstruction; a 2-D toy run's image options; a latent run's pixel-space reconstruction)."""
    stage_runs.check_sampled_alone(run.config, FLAGS.workdir)
    if FLAGS.clip_run and FLAGS.guidance != "clip":
        raise ValueError(f"--clip_run={FLAGS.clip_run} is the CLIP of --guidance clip; add --guidance clip or drop it")
    if run.tokenizer is not None and (FLAGS.interpolate or FLAGS.reconstruct):
        raise ValueError(f"{FLAGS.workdir} is text-conditioned: --interpolate and --reconstruct are not implemented for "
                         "prompts yet; drop them (the prompt grid and --trajectory are)")
    samplers.check_steps(FLAGS.sampler, FLAGS.steps, run.schedule.num_steps, what="--steps")
    if FLAGS.eta and not samplers.takes(FLAGS.sampler, "eta"):
        raise ValueError(f"--eta={FLAGS.eta:g}: the {FLAGS.sampler} sampler has no η; drop --eta")
    inference.check_label(run.config, FLAGS.label, FLAGS.guidance)
    if is_toy(run) and (FLAGS.interpolate or FLAGS.reconstruct or FLAGS.guidance):
        raise ValueError(f"{FLAGS.workdir} is a 2-D toy run: --interpolate, --reconstruct and --guidance are "
                         "for image models; drop them (the figure shows the reverse trajectory)")
    if run.latent is not None and FLAGS.reconstruct:
        raise ValueError(f"{FLAGS.workdir} diffuses latents of {run.config.data.autoencoder}: --reconstruct inverts "
                         "pixel images with DDIM; drop it (the grid, --trajectory and --interpolate are decoded)")


def is_toy(run) -> bool:
    """Whether ``run`` is a 2-D toy run (an MLP denoiser of points), drawn as a figure, not a grid."""
    return run.config.model.kind == "mlp"


def request_from_flags(run) -> Request:
    """The flags' ``Request``, the run's ``sample.clip`` and ``sample.spacing`` standing in for those not given."""
    clip = run.config.sample.clip if FLAGS.clip is None else FLAGS.clip
    spacing = run.config.sample.spacing if FLAGS.spacing is None else FLAGS.spacing
    return Request(sampler=FLAGS.sampler, steps=FLAGS.steps, eta=FLAGS.eta, clip=clip, spacing=spacing, num=FLAGS.num,
                   batch=FLAGS.batch, seed=FLAGS.seed, guidance=FLAGS.guidance, scale=FLAGS.scale, label=FLAGS.label)


def sample_run(run, r: Request, prompts: list[str], per_prompt, clip_guide):
    """Draw ``r`` from ``run`` and write the grid (``r.num`` samples of each prompt, whose condition is
    ``per_prompt``, or of the classes in turn) and the pictures the flags ask for (``--trajectory``,
    ``--interpolate``, ``--reconstruct``); for a 2-D toy run, its figure instead."""
    mesh = parallel.make_mesh()
    out = Path(FLAGS.out or Path(FLAGS.workdir or ".") / "sample")
    out.mkdir(parents=True, exist_ok=True)
    tag = (f"{r.sampler}{r.steps}" + (f"_{r.spacing}" if r.spacing else "")
           + f"_eta{r.eta:g}_{r.guidance or 'unguided'}{r.scale:g}_seed{r.seed}")
    if is_toy(run):
        return write_toy_figure(run, mesh, r, out, tag)
    guides = dict(classifier_log_prob=inference.load_noisy_classifier(FLAGS.classifier_workdir, run.schedule)
                  if r.guidance == "classifier" else None, clip_guide=clip_guide)
    draw = inference.build_draw_fn(run, mesh, sampler=r.sampler, steps=r.steps, eta=r.eta, clip=r.clip, spacing=r.spacing,
                                  guide=r.guidance, **guides)
    condition = None
    if prompts:
        condition = jax.tree.map(lambda a: np.repeat(a, r.num, axis=0), per_prompt)
        write_prompt_grid(run, draw, mesh, r, out, tag, prompts, condition)
    else:
        images = inference.draw_samples(run, draw, mesh, num=r.num, batch=r.batch, seed=r.seed, label=r.label,
                                       scale=r.scale)
        write(out, tag, images, images, label=inference.class_labels(run.config, r.num, r.label))
    if FLAGS.trajectory:
        write_trajectory(run, mesh, r, out, tag, guides, condition)
    if FLAGS.interpolate:
        write_interpolation(run, mesh, r, out, tag)
    if FLAGS.reconstruct:
        write_reconstruction(run, mesh, r, out, tag)


if __name__ == "__main__":
    cli.run(main)
