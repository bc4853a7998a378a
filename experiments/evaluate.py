"""Measure a trained run as papers do: ``python -m experiments.evaluate --workdir runs/mnist``.

For each sampler setting (``--samplers ddpm:1000,ddim:50,ddim:50:1.0`` = name:steps[:η]) it draws
``--num`` samples (kept in ``<workdir>/eval/samples_<tag>_seed<s>_step<n>.npz``, so a rerun skips them) and
computes FID against the training split, the Inception Score (10 splits) and the fraction of
samples the classifier gives a probability ≥ 0.9; the held-out split's own FID and IS are the floor and
ceiling. NLL in bits/dim on held-out images comes from the full variational bound (``--nll vlb``)
and/or the probability-flow ODE (``--nll ode``: exact likelihood by an adaptive solver, slower). Results go to
``<workdir>/eval/*.json`` and ``<workdir>/eval/results.md``. A text-conditioned run draws its samples for
the held-out images' captions in turn and also reports the share whose class (the feature classifier's
argmax) is the one the prompt names and the share showing the attributes it asks for; its NLL is
conditioned on each held-out image's own caption. ``--guidance clip --clip_run runs/clip_mnist_noisy``
(GLIDE's CLIP guidance) draws for the held-out captions too, also from an unconditional run, and
reports the same prompt alignment.

Features: for 28×28 single-channel data the project's classifier (the embedded MNIST one, or
``--classifier_weights``); for other data Inception-v3 pool3 (``--inception_weights``, pytorch-fid's
``pt_inception-2015-12-05`` file).

``--cascade runs/base14,runs/sr14to28 --aug_level 100 [--truncated] [--scales 2,1]`` measures a cascade
(Ho et al. 2021) instead: the metrics of its final samples at the last stage's resolution, for the
``--samplers`` setting (one: every stage's sampler), and of the last stage's input upsampled alone
(``upsampled_input``: what that stage adds), in ``<last stage>/eval/cascade_<lower stages>_<tag>.json``.
``--cascade heldout,runs/sr14to28`` measures a super-resolution stage on real inputs: the held-out
images shrunk to its low resolution by its training's resize.

``--unclip runs/unclip_prior,runs/unclip_decoder --scales 0,3`` measures unCLIP (Ramesh et al. 2022): the
decoder's samples of the prior's embeddings for the held-out captions, with the prompt alignment of a
text run, in ``<decoder>/eval/unclip_<tag>.json``. ``--clip_score_run runs/clip_mnist`` adds the CLIP
score (100 · cosine of sample and prompt) to every measurement drawn for prompts.

``--step 6000`` measures an earlier kept checkpoint (``train.keep_period`` keeps milestones) and
``--weights raw`` its trained parameters instead of their EMA, in ``<workdir>/eval/step<n>_<weights>/``;
``--spacing trailing`` draws every setting on other kept steps than the run's (``euler_ancestral50_trailing``).
"""
from pathlib import Path

from absl import flags, logging

from diffusion import schedules
from experiments import cli, draw_cache, inference, results
from experiments.cascade import chain
from experiments.unclip import generation

flags.DEFINE_string("workdir", None, "A training run's workdir.")
flags.DEFINE_string("samplers", "ddim:50", "Comma-separated sampler settings name:steps[:eta].")
flags.DEFINE_enum("spacing", None, list(schedules.SPACING_NAMES), "--workdir: which steps every setting keeps: "
                  "leading (DDIM's), trailing (from T − 1), linspace or quad (default: the run's sample.spacing, else "
                  "each sampler's own); named in the setting's tag.")
flags.DEFINE_integer("num", 1000, "Samples per sampler setting.")
flags.DEFINE_integer("batch", 250, "Samples per compiled batch (a multiple of the device count).")
flags.DEFINE_integer("seed", 0, "Noise seed.")
flags.DEFINE_integer("step", None, "--workdir: the kept checkpoint to measure (default: the latest).")
flags.DEFINE_enum("weights", "ema", list(inference.WEIGHTS), "--workdir: the checkpoint's EMA parameters (the "
                  "default) or its raw ones (TrainState.params, no average).")
flags.DEFINE_enum("features", "auto", ["auto", "classifier", "inception"], "Feature network for FID/IS.")
flags.DEFINE_string("classifier_weights", None, "A trained classifier.msgpack (default: the embedded MNIST one).")
flags.DEFINE_string("inception_weights", None, "pytorch-fid's pt_inception-2015-12-05 weights file.")
flags.DEFINE_integer("nll_examples", 128, "Held-out images for NLL in bits/dim (0 skips it).")
flags.DEFINE_list("nll", ["vlb"], "NLL methods: vlb (the variational bound), ode (the probability-flow ODE "
                  "likelihood, Song et al. 2021), or vlb,ode.")
flags.DEFINE_bool("ode_ignores_learned_variance", False,
                  "Allow --nll ode on a learned-variance model (the ODE uses its ε̂ channels only).")
flags.DEFINE_string("stats_dir", str(Path.home() / ".cache" / "diffusion" / "fid_stats"),
                    "Where reference feature statistics are cached per dataset and split.")
flags.DEFINE_enum("guidance", "", list(inference.GUIDANCE), "Guidance kind.")
flags.DEFINE_float("scale", 0.0, "Guidance weight w.")
flags.DEFINE_string("classifier_workdir", None, "A noisy classifier's workdir, for --guidance classifier.")
flags.DEFINE_string("clip_run", None, "A noise-aware CLIP's workdir, for --guidance clip.")
flags.DEFINE_string("clip_score_run", None, "A CLIP run of clean images (configs/text/clip_mnist.py): also report the CLIP "
                    "score of samples drawn for prompts.")
flags.DEFINE_list("unclip", None, "Workdirs of an unCLIP prior and decoder: measure prompt → prior → decoder samples "
                  "for the held-out captions (replaces --workdir; --scales: the prior's and decoder's weights).")
flags.DEFINE_list("cascade", None, "Workdirs of a cascade, base first (or the word heldout: the held-out images "
                  "at the first stage's low resolution): measure its final samples (replaces --workdir).")
flags.DEFINE_list("aug_level", None, "--cascade: level s per super-resolution stage (default: each stage's cascade.aug_level).")
flags.DEFINE_bool("truncated", None, "--cascade: truncated conditioning augmentation (default: the stages' cascade.truncated).")
flags.DEFINE_list("scales", ["0"], "--cascade, --unclip: classifier-free guidance weight per stage.")
FLAGS = flags.FLAGS


def draws_from_flags() -> results.Draws:
    """What ``--workdir`` draws of every setting, read once from the flags."""
    return results.Draws(num=FLAGS.num, batch=FLAGS.batch, seed=FLAGS.seed, guide=FLAGS.guidance, scale=FLAGS.scale,
                         classifier_workdir=FLAGS.classifier_workdir, clip_run=FLAGS.clip_run, spacing=FLAGS.spacing)


def measures_from_flags() -> results.Measures:
    """What ``--workdir``'s samples are measured with, and its NLL, read once from the flags."""
    return results.Measures(features=FLAGS.features, classifier_weights=FLAGS.classifier_weights,
                            inception_weights=FLAGS.inception_weights, stats_dir=FLAGS.stats_dir,
                            nll_examples=FLAGS.nll_examples, nll_methods=tuple(FLAGS.nll),
                            ode_ignores_learned_variance=FLAGS.ode_ignores_learned_variance,
                            clip_score_run=FLAGS.clip_score_run)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    settings = [draw_cache.parse_setting(s) for s in FLAGS.samplers.split(",") if s]
    if (FLAGS.cascade or FLAGS.unclip) and (FLAGS.step is not None or FLAGS.weights != "ema"
                                            or FLAGS.spacing is not None):
        raise ValueError("--step, --weights and --spacing apply to one --workdir; --cascade and --unclip measure "
                         "each stage's latest EMA with its own sample.spacing: drop them, or measure a stage alone "
                         "with --workdir")
    if FLAGS.cascade:
        if len(settings) != 1:
            raise ValueError(f"--cascade measures one sampler setting (every stage's); --samplers={FLAGS.samplers!r} "
                             "gives several: run one evaluate per setting")
        (sampler, steps, eta), = settings
        chain.evaluate(FLAGS.cascade, chain.settings_from_flags(
            FLAGS.cascade, FLAGS.aug_level, FLAGS.truncated, FLAGS.scales, sampler, steps, eta), num=FLAGS.num,
            batch=FLAGS.batch, seed=FLAGS.seed, features=FLAGS.features, classifier_weights=FLAGS.classifier_weights,
            inception_weights=FLAGS.inception_weights, stats_dir=FLAGS.stats_dir)
        return
    if FLAGS.unclip:
        if len(settings) != 1:
            raise ValueError(f"--unclip measures one decoder sampler setting; --samplers={FLAGS.samplers!r} gives "
                             "several: run one evaluate per setting")
        (sampler, steps, eta), = settings
        generation.evaluate(FLAGS.unclip, FLAGS.scales, generation.Settings(
            sampler=sampler, steps=steps, eta=eta, clip=None, num=FLAGS.num, batch=FLAGS.batch, seed=FLAGS.seed),
            features=FLAGS.features, classifier_weights=FLAGS.classifier_weights, stats_dir=FLAGS.stats_dir,
            clip_score_run=FLAGS.clip_score_run)
        return
    results.evaluate_run(FLAGS.workdir, settings, draws_from_flags(), measures_from_flags(), step=FLAGS.step,
                         weights=FLAGS.weights)


if __name__ == "__main__":
    flags.register_multi_flags_validator(["workdir", "cascade", "unclip"],
                                         lambda f: bool(f["workdir"] or f["cascade"] or f["unclip"]),
                                         "give --workdir (a run), --cascade (a cascade's runs) or --unclip (a prior "
                                         "and a decoder)")
    cli.run(main)
