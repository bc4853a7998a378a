"""A trained run loaded back, and samples drawn from it in sharded batches: the glue behind
``experiments.sample``, ``experiments.evaluate`` and the studies."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization
from tqdm import tqdm

from diffusion import parallel, samplers, visualize
from diffusion.cascade import augmentation
from diffusion.data import datasets
from diffusion.schedules import Schedule
from diffusion.text import captions
from diffusion.text.tokenizer import split_words, Tokenizer
from experiments import build, guides, runs
from experiments.latent import autoencoder_runs
from experiments.text import captioning
from experiments.unclip import stage_runs

GUIDANCE = tuple(guides.GUIDES)   # the --guidance choices


@dataclass
class Run:
    """A trained diffusion model: its config, network, schedule and parameters (the EMA's unless
    ``load_run`` was asked for the raw ones), for latent
    diffusion the latent space its samples are decoded from (None: pixels), and for a
    text-conditioned run the tokenizer it was trained with (None: it reads no text)."""
    config: ml_collections.ConfigDict
    model: Any
    schedule: Schedule
    params: Any
    step: int
    latent: Optional[autoencoder_runs.LatentSpace] = None
    tokenizer: Optional[Tokenizer] = None


WEIGHTS = {"ema": "ema_params", "raw": "params"}   # a diffusion checkpoint's parameter sets, by name


def load_run(workdir, step: Optional[int] = None, weights: str = "ema") -> Run:
    """The EMA parameters of ``workdir``'s latest (or ``step``'s) checkpoint, with its config; only
    they are read (no optimizer is built and no optimizer state is restored). ``weights="raw"``
    reads the trained parameters themselves (``TrainState.params``) in their place."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: a checkpoint holds {' or '.join(map(repr, WEIGHTS))} parameters")
    config = runs.load_config(workdir)
    build.validate(config)
    model, schedule = build.make_model(config), build.make_schedule(config)
    abstract = jax.eval_shape(lambda k: build.init_params(model, config, k), jax.random.key(0))
    entry = WEIGHTS[weights]
    state, meta = runs.restore_partial(workdir, {entry: runs.replicated_like(abstract)}, config, step, "train")
    tokenizer = captioning.read_tokenizer(config, workdir) if captioning.is_conditioned(config) else None
    return Run(config, model, schedule, state[entry], int(meta["data_position"]),
               autoencoder_runs.latent_space(config), tokenizer)


def load_noisy_classifier(workdir, schedule: Schedule):
    """``log_prob_fn(x_t, timesteps, labels) -> [B]`` of an ADM noisy classifier trained by
    ``experiments.train_classifier`` in ``workdir``; its schedule must be the model's."""
    config = runs.load_config(workdir)
    if config.classifier.kind != "noisy":
        raise ValueError(f"{workdir} holds a {config.classifier.kind!r} classifier; classifier guidance "
                         "needs a noisy one (configs/noisy_classifier_mnist.py)")
    check_schedule(workdir, config, schedule, "classifier")
    model = build.make_classifier(config)
    shape = (1,) + build.data_shape(config)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros((1,), jnp.int32))["params"])
    params = serialization.from_bytes(template, (Path(workdir) / "classifier.msgpack").read_bytes())

    def log_prob_fn(x_t, timesteps, labels):
        logits = model.apply({"params": params}, x_t, timesteps)
        return jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]
    return log_prob_fn


def check_schedule(workdir, config, schedule: Schedule, what: str):
    """Refuse a guide (a noisy classifier, a noised CLIP) trained in ``workdir`` with ``config`` on
    another noise schedule than the model's ``schedule``: its t would name another noise level."""
    theirs = build.make_schedule(config)
    if theirs.num_steps != schedule.num_steps or not np.allclose(theirs.alphas_cumprod, schedule.alphas_cumprod):
        raise ValueError(f"the {what} in {workdir} was trained on another noise schedule "
                         f"({config.diffusion.schedule}, T={config.diffusion.num_steps}) than this run's: train it "
                         "with the run's diffusion settings")


@dataclass(frozen=True)
class CascadeStage:
    """A run's place in a cascade (``experiments.cascade.chain``; Ho et al. 2021): a super-resolution
    stage is given the lower stage's output at level s = ``aug_level`` (None: the run draws alone),
    already z_s when ``truncated`` (``build.super_resolution_inputs``); a stage whose output feeds a
    truncated one stops at level ``stop_at`` (``augmentation.truncate``)."""
    aug_level: Optional[int] = None
    truncated: bool = False
    stop_at: Optional[int] = None


def build_draw_fn(run: Run, mesh, *, sampler: str, steps: int, eta: float = 0.0, clip: Optional[str] = None,
                  spacing=None, keep_every: int = 0, guide: str = "", classifier_log_prob=None, clip_guide=None,
                  stage: CascadeStage = CascadeStage()):
    """A compiled ``fn(params, key, condition, scale[, low_res]) -> samples`` (and the trajectory when
    ``keep_every > 0``) from x_T ~ N(0, I) drawn from ``key`` for a batch the size of ``condition``
    (``build.conditioning``'s labels int[B] or token ids int[B, L]; an unCLIP decoder's
    {'cond_vector' [B, E][, 'tokens']}; CLIP guidance's ``clip_guidance.prompt_condition``), sharded
    over ``data``, guided by ``guides.GUIDES[guide]`` with weight w = ``scale`` (its models: the noisy
    classifier, the ``clip_guidance.ClipGuide``); a latent run's outputs are decoded to images inside.
    ``clip`` and ``spacing`` (None: the config's) threshold x̂_0 and choose the kept steps; a
    super-resolution ``stage`` also takes the lower stage's output ``low_res`` [B, h, w, C]."""
    config = run.config
    if stage.aug_level is None:
        check_draws_alone(config)
    method, models = guides.lookup(guide), guides.GuideModels(classifier_log_prob, clip_guide)
    method.check(run, models)
    step, run_schedule, timesteps, t_end = plan_steps(run, stage, sampler=sampler, steps=steps, eta=eta, clip=clip,
                                                      spacing=spacing)
    wrap = method.wrapper(run, models)

    def draw(params, key, condition, scale, low_res=None):
        k_T, k_steps = jax.random.split(key)
        k_aug = jax.random.fold_in(key, 2)
        x_T = jax.lax.with_sharding_constraint(
            jax.random.normal(k_T, jax.tree.leaves(condition)[0].shape[:1] + build.data_shape(config)),
            parallel.data_sharded(mesh))
        model_fn, cond = wrap(build.make_denoiser(run.model, params), condition, scale)
        if config.data.low_resolution:
            cond = dict(cond or {}, **build.super_resolution_inputs(config, run.schedule, k_aug, low_res,
                                                                     stage.aug_level, stage.truncated))
        out = samplers.sample(step, model_fn, run_schedule, x_T, k_steps, timesteps=timesteps,
                              keep_every=keep_every, cond=cond, t_end=t_end)
        return jax.tree.map(lambda x: autoencoder_runs.decoded(run.latent, x), out)

    rep = parallel.replicated(mesh)
    return jax.jit(draw, in_shardings=(rep,) * 4 + (parallel.data_sharded(mesh),) if config.data.low_resolution else rep)


def plan_steps(run: Run, stage: CascadeStage, **settings):
    """``build.make_sampler``'s (step, schedule, timesteps) for the sampler ``settings``, and the index
    the chain ends at: −1 (x_0), or for a stage stopped at ``stage.stop_at`` that level's, the plan
    truncated there (``augmentation.truncate``: truncated conditioning augmentation, Ho et al. 2021)."""
    step, run_schedule, timesteps = build.make_sampler(run.config, run.schedule, **settings)
    if stage.stop_at is None:
        return step, run_schedule, timesteps, -1
    run_schedule, timesteps, t_end = augmentation.truncate(run.schedule, run_schedule, timesteps, stage.stop_at,
                                                           samplers.SAMPLERS[settings["sampler"]].respaced)
    return step, run_schedule, timesteps, t_end


def check_draws_alone(config):
    """Refuse to draw from a super-resolution stage (``data.low_resolution``) without the low-resolution
    image it is conditioned on: such a run samples only inside a cascade."""
    if config.data.low_resolution:
        raise ValueError(f"this run is a super-resolution stage (data.low_resolution={config.data.low_resolution} → "
                         f"{config.data.image_size}) and samples only conditioned on a low-resolution image: sample it "
                         "as the last stage of a cascade, --cascade <base workdir>,<this workdir>")


def prompt_tokens(run: Run, prompts) -> np.ndarray:
    """``tokens_for`` the run's config and tokenizer."""
    return tokens_for(run.config, run.tokenizer, prompts)


def tokens_for(config, tokenizer: Optional[Tokenizer], prompts) -> np.ndarray:
    """Token ids int32 [P, L] of ``prompts`` for a text-conditioned run (its ``config`` and
    ``tokenizer``; None: it reads no text), refused before any work: no prompt, words outside the
    run's vocabulary (named), more words than its context holds (the lengths said), prompts for a
    run that reads no text. The empty prompt is the null caption: a draw from the unconditional
    model the caption dropout trained (refused where there was none)."""
    prompts = list(prompts)
    if tokenizer is None:
        if prompts:
            raise ValueError(f"--prompt/--prompts: this run is not text-conditioned (model.context_encoder="
                             f"{config.model.context_encoder!r}), so a prompt has no effect without --guidance clip; drop it"
                             + (" (use --label for its classes)" if config.model.num_classes else ""))
        return np.zeros((0, 0), np.int32)
    if not prompts:
        raise ValueError("this run is text-conditioned: give --prompt 'a thick seven' (repeatable) or --prompts FILE "
                         "(one per line); --prompt '' draws from the null caption, the unconditional model")
    tokens = captioning.check_prompts(tokenizer, prompts)
    if any(not split_words(p) for p in prompts):   # no words: the end token alone
        captioning.check_null_caption(config, "--prompt ''")
    return tokens


def write_grid(out: Path, tag: str, blocks: list, **arrays):
    """``<out>/<tag>.png``, each block's text above its images (``visualize.labelled_grid``), and
    ``<out>/<tag>.npz`` with ``arrays``."""
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / f"{tag}.npz", **arrays)
        path = visualize.save_png(visualize.labelled_grid(blocks), out / f"{tag}.png", scale=2)
        print(f"wrote {path} and {out / (tag + '.npz')}")


def write_prompt_grid(out: Path, tag: str, prompts: list[str], images: np.ndarray, **arrays):
    """``write_grid`` of each prompt above its samples (``images``: the same number for each, in
    turn), the ``.npz`` holding the images, each one's prompt and ``arrays``."""
    num = len(images) // len(prompts)
    blocks = [(p or "'' (the null caption)", images[i * num:(i + 1) * num]) for i, p in enumerate(prompts)]
    write_grid(out, tag, blocks, image=images, prompt=np.repeat(np.asarray(prompts), num), **arrays)


def check_label(config, label: int, guide: str = ""):
    """Refuse a requested class (``--label``) the model cannot draw: outside [0, data.num_classes), a
    text-conditioned run's (it reads prompts), or any class for an unconditional model without
    classifier guidance (it would be ignored)."""
    if label == -1:
        return
    if captioning.is_conditioned(config):
        raise ValueError(f"--label={label}: this run is text-conditioned; ask for the class in words, e.g. "
                         f"--prompt {captions.class_prompts(config.data.captions)[label]!r}")
    if not 0 <= label < config.data.num_classes:
        raise ValueError(f"--label={label} is not a class of this run: use 0 … {config.data.num_classes - 1}, "
                         "or -1 for the classes in turn")
    if config.model.num_classes == 0 and guide != "classifier":
        raise ValueError(f"--label={label}: this run's model is unconditional (model.num_classes=0), so a "
                         "label has no effect; drop --label, or use --guidance classifier")


def class_labels(config, num: int, label: int = -1) -> np.ndarray:
    """``label`` for every sample, or classes in turn when ``label`` < 0."""
    k = max(config.data.num_classes, 1)
    return np.full(num, label, np.int32) if label >= 0 else (np.arange(num) % k).astype(np.int32)


def draw_samples(run: Run, draw_fn, mesh, *, num: int, batch: int, seed: int, label: int = -1,
                 scale: float = 0.0, desc: str = "sample", first: int = 0, condition=None) -> np.ndarray:
    """Samples ``first`` … ``num − 1`` as uint8 images (float32 points for 2-D toy data, float32 CLIP
    image embeddings for an unCLIP prior), drawn
    ``batch`` at a time from noise seeded by ``seed`` and the batch's position, so a draw that
    starts at a multiple of ``batch`` continues an earlier one exactly. ``condition``: each sample's
    (``num`` rows: token ids for a text-conditioned run, which needs them; a dict of such arrays for
    CLIP guidance); default the classes in turn, or ``label``."""
    parallel.check_batch(batch, mesh, what="--batch")
    if condition is None and run.tokenizer is not None:
        raise ValueError("a text-conditioned run draws for prompts: give each sample's token ids (prompt_tokens)")
    labels = class_labels(run.config, num, label) if condition is None else jax.tree.map(np.asarray, condition)
    out = []
    for start in tqdm(range(first, num, batch), desc=desc, unit="batch", disable=jax.process_index() != 0):
        n = min(batch, num - start)
        lab = jax.tree.map(lambda a: np.resize(a[start:start + n], (batch,) + a.shape[1:]), labels)
        x = draw_fn(run.params, jax.random.fold_in(jax.random.key(seed), start), lab, np.float32(scale))
        x = parallel.gather(x)[:n]
        out.append(x if run.config.model.kind in ("mlp", stage_runs.PRIOR) else datasets.to_uint8(x))
    return np.concatenate(out)


def reconstruct(run: Run, mesh, x0: np.ndarray, labels: np.ndarray, steps: int, fixed_point_iters: int = 3):
    """(latents, decodes): images in [−1, 1] inverted to x_T with DDIM (η = 0, fixed-point
    iterations, no clipping) over ``steps`` steps and decoded back (Song et al. 2021, §5.4)."""
    config = run.config
    step, schedule, timesteps = build.make_sampler(config, run.schedule, sampler="ddim", steps=steps, eta=0.0, clip="none")
    kw = build.output_kwargs(config)

    def invert_and_decode(params, x, labels):
        model_fn, cond = build.make_denoiser(run.model, params), build.conditioning(config, labels)
        z = samplers.ddim_invert(model_fn, schedule, x, timesteps=timesteps[::-1],
                                 fixed_point_iters=fixed_point_iters, cond=cond, **kw)
        return z, samplers.sample(step, model_fn, schedule, z, jax.random.key(0), timesteps=timesteps, cond=cond)

    dat = parallel.data_sharded(mesh)
    z, decoded = jax.jit(invert_and_decode, in_shardings=(parallel.replicated(mesh), dat, dat))(
        run.params, parallel.pad_to_devices(x0, mesh), parallel.pad_to_devices(labels, mesh))
    return parallel.gather(z)[:len(x0)], parallel.gather(decoded)[:len(x0)]
