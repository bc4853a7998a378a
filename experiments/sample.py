"""Draw samples from a trained run: ``python -m experiments.sample --workdir runs/mnist --sampler ddim --steps 50``.

Writes ``<out>/<tag>.png`` (a grid) and ``<out>/<tag>.npz`` (the samples, uint8). Options:
``--trajectory`` (x_t and predicted x_0 over the reverse process), ``--interpolate`` (spherical
interpolation between two DDIM latents), ``--reconstruct`` (DDIM inversion of held-out images
and decoding back); ``--guidance classifier_free|classifier --scale w`` with ``--label``.
An official DDPM checkpoint in diffusers' layout loads with ``--config configs/cifar10_ddpm.py
--diffusers_weights <file>`` in place of ``--workdir``'s checkpoint.
"""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from diffusion import parallel, samplers, visualize
from diffusion.data import datasets
from diffusion.models.convert import load_diffusers_unet
from experiments import cli, common, sampling

flags.DEFINE_string("workdir", None, "A training run's workdir (its config and latest EMA checkpoint).")
config_flags.DEFINE_config_file("config", None, "With --diffusers_weights: the config the weights fit.")
flags.DEFINE_string("diffusers_weights", None, "A diffusers UNet2DModel .safetensors/.bin to sample from.")
flags.DEFINE_string("out", None, "Output directory (default <workdir>/sample).")
flags.DEFINE_enum("sampler", "ddim", list(samplers.SAMPLERS), "Reverse-process sampler.")
flags.DEFINE_integer("steps", 50, "Number of sampling steps (respaced for ddpm/pc).")
flags.DEFINE_float("eta", 0.0, "DDIM η (0 deterministic, 1 DDPM-like).")
flags.DEFINE_enum("clip", None, ["static", "dynamic", "none"], "Thresholding of the predicted x_0 "
                  "(default: the run's sample.clip).")
flags.DEFINE_integer("num", 64, "Number of samples.")
flags.DEFINE_integer("batch", 64, "Samples per compiled batch (a multiple of the device count).")
flags.DEFINE_integer("seed", 0, "Noise seed.")
flags.DEFINE_enum("guidance", "", ["", "classifier_free", "classifier"], "Guidance kind.")
flags.DEFINE_float("scale", 0.0, "Guidance weight w.")
flags.DEFINE_integer("label", -1, "Class to draw (−1: classes in turn).")
flags.DEFINE_string("classifier_workdir", None, "A noisy classifier's workdir, for --guidance classifier.")
flags.DEFINE_bool("trajectory", False, "Also write the reverse process of 8 samples as a strip.")
flags.DEFINE_bool("interpolate", False, "Write spherical interpolations between pairs of DDIM latents.")
flags.DEFINE_bool("reconstruct", False, "Invert held-out images with DDIM and decode them back.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU).")
FLAGS = flags.FLAGS


def load(flags_) -> sampling.Run:
    if flags_.diffusers_weights:
        if flags_.config is None:
            raise ValueError("--diffusers_weights needs --config: the config whose U-Net the weights fit")
        config = flags_.config
        common.validate(config)
        model = common.make_model(config)
        params = load_diffusers_unet(flags_.diffusers_weights, model, image_channels=config.data.channels)
        return sampling.Run(config, model, common.make_schedule(config), params, step=0)
    if not flags_.workdir:
        raise ValueError("give --workdir (a training run) or --config with --diffusers_weights")
    return sampling.load_run(flags_.workdir)


def gather(x) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def write(out: Path, tag: str, pictures: np.ndarray, samples: np.ndarray, ncols=None, **extra):
    if jax.process_index() == 0:
        np.savez(out / f"{tag}.npz", image=samples, **extra)
        path = visualize.save_png(visualize.image_grid(pictures, ncols=ncols), out / f"{tag}.png", scale=2)
        print(f"wrote {path} and {out / (tag + '.npz')}")


def trajectory(run, mesh, args, out: Path, tag: str, classifier):
    """8 samples' x_t (odd rows) and predicted x_0 (even rows) at ~10 points of the reverse process."""
    n = max(8, mesh.devices.size)
    draw = sampling.build_draw_fn(run, mesh, sampler=args.sampler, steps=args.steps, eta=args.eta,
                                  clip=args.clip, guide=args.guidance, classifier_log_prob=classifier,
                                  keep_every=max(args.steps // 10, 1))
    _, frames = draw(run.params, jax.random.key(args.seed), sampling.class_labels(run.config, n, args.label),
                     np.float32(args.scale))
    x_t, x0 = gather(frames["x_t"]), gather(frames["x0"])     # [F, n, H, W, C]
    rows = np.stack([x_t, x0], axis=2).reshape((x_t.shape[0], 2 * n) + x_t.shape[2:])
    strip = visualize.trajectory_strip(np.clip(rows, -1, 1))
    if jax.process_index() == 0:
        print(f"wrote {visualize.save_png(strip, out / f'{tag}_trajectory.png', scale=2)}")


def interpolate(run, mesh, args, out: Path, tag: str, pairs: int = 4, points: int = 9):
    """DDIM (η = 0) decodes of slerp(z0, z1, α) for ``pairs`` pairs of latents, α in [0, 1]."""
    config = run.config
    step, schedule, timesteps = common.make_sampler(config, run.schedule, sampler="ddim", steps=args.steps,
                                                    eta=0.0, clip=args.clip)
    shape = common.data_shape(config)
    k0, k1 = jax.random.split(jax.random.key(args.seed))
    z0, z1 = jax.random.normal(k0, (pairs,) + shape), jax.random.normal(k1, (pairs,) + shape)
    alphas = jnp.linspace(0.0, 1.0, points)
    z = jax.vmap(lambda a: samplers.slerp(z0, z1, a))(alphas).transpose(1, 0, 2, 3, 4).reshape((-1,) + shape)
    z = jnp.concatenate([z, z[:-len(z) % mesh.devices.size]])
    labels = np.resize(np.repeat(sampling.class_labels(config, pairs, args.label), points), len(z))
    cond = {"labels": jnp.asarray(labels)} if config.model.num_classes else None
    fn = jax.jit(lambda p, x: samplers.sample(step, common.make_denoiser(run.model, p), schedule, x,
                                              jax.random.key(0), timesteps=timesteps, cond=cond),
                 in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)))
    images = datasets.to_uint8(gather(fn(run.params, z))[:pairs * points])
    write(out, f"{tag}_interpolation", images, images, ncols=points, alpha=np.asarray(alphas))


def reconstruct(run, mesh, args, out: Path, tag: str, num: int = 16):
    """Held-out images → DDIM latents (fixed-point inversion) → DDIM decodes; rows: real, latent, decoded."""
    config = run.config
    _, heldout = common.load_data(config)
    num += -num % mesh.devices.size
    x0 = datasets.to_model_range(heldout.images[:num])
    z, decoded = sampling.reconstruct(run, mesh, x0, heldout.labels[:num], args.steps)
    mse = float(np.mean((decoded - x0) ** 2))
    latent_view = np.clip(z / 3, -1, 1)
    rows = np.concatenate([x0, latent_view, np.clip(decoded, -1, 1)])
    write(out, f"{tag}_reconstruction", datasets.to_uint8(rows), datasets.to_uint8(decoded), ncols=num,
          latent=z, mse=mse)
    if jax.process_index() == 0:
        print(f"reconstruction of {num} held-out images with {args.steps} DDIM steps: mean squared error {mse:.2e}")


def toy(run, mesh, args, out: Path, tag: str):
    """A 2-D toy run: the data | samples | reverse-trajectory figure and the points as ``<tag>.npz``."""
    if args.interpolate or args.reconstruct or args.guidance:
        raise ValueError(f"{args.workdir} is a 2-D toy run: --interpolate, --reconstruct and --guidance are "
                         "for image models; drop them (the figure shows the reverse trajectory)")
    n = args.num + -args.num % mesh.devices.size
    draw = sampling.build_draw_fn(run, mesh, sampler=args.sampler, steps=args.steps, eta=args.eta,
                                  clip=args.clip, keep_every=max(args.steps // 20, 1))
    final, frames = draw(run.params, jax.random.key(args.seed), sampling.class_labels(run.config, n), np.float32(0))
    final, frames = gather(final)[:args.num], gather(frames["x_t"])[:, :args.num]
    train_split, _ = common.load_data(run.config)
    if jax.process_index() == 0:
        np.savez(out / f"{tag}.npz", points=final)
        path = visualize.toy_figure(train_split.images[:args.num], final, frames, out / f"{tag}.png",
                                    title=f"{run.config.data.source}, step {run.step}, {args.sampler} {args.steps}")
        print(f"wrote {path} and {out / (tag + '.npz')}")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    common.check_flags_at_least(1, num=FLAGS.num, batch=FLAGS.batch, steps=FLAGS.steps)
    if FLAGS.distributed:
        jax.distributed.initialize()
    run = load(FLAGS)
    samplers.check_steps(FLAGS.sampler, FLAGS.steps, run.schedule.num_steps, what="--steps")
    sampling.check_label(run.config, FLAGS.label, FLAGS.guidance)
    mesh = parallel.make_mesh()
    out = Path(FLAGS.out or Path(FLAGS.workdir or ".") / "sample")
    out.mkdir(parents=True, exist_ok=True)
    clip = run.config.sample.clip if FLAGS.clip is None else "" if FLAGS.clip == "none" else FLAGS.clip
    FLAGS.clip = clip
    tag = f"{FLAGS.sampler}{FLAGS.steps}_eta{FLAGS.eta:g}_{FLAGS.guidance or 'unguided'}{FLAGS.scale:g}_seed{FLAGS.seed}"
    if run.config.model.kind == "mlp":
        return toy(run, mesh, FLAGS, out, tag)
    classifier = (sampling.load_noisy_classifier(FLAGS.classifier_workdir, run.schedule)
                  if FLAGS.guidance == "classifier" else None)
    draw = sampling.build_draw_fn(run, mesh, sampler=FLAGS.sampler, steps=FLAGS.steps, eta=FLAGS.eta, clip=clip,
                                  guide=FLAGS.guidance, classifier_log_prob=classifier)
    images = sampling.draw_samples(run, draw, mesh, num=FLAGS.num, batch=FLAGS.batch, seed=FLAGS.seed,
                                   label=FLAGS.label, scale=FLAGS.scale)
    write(out, tag, images, images, label=sampling.class_labels(run.config, FLAGS.num, FLAGS.label))
    if FLAGS.trajectory:
        trajectory(run, mesh, FLAGS, out, tag, classifier)
    if FLAGS.interpolate:
        interpolate(run, mesh, FLAGS, out, tag)
    if FLAGS.reconstruct:
        reconstruct(run, mesh, FLAGS, out, tag)


if __name__ == "__main__":
    cli.run(main)
