"""CLIP guidance (GLIDE, Nichol et al. 2022, §2.4, §3.4): the guided function's gradient term
against a central difference of the noised CLIP's similarity, w = 0, the one-step mean shift in
closed form, every sampler drawing through it, the CLI on tiny trained runs, and each refusal."""
import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist, mnist_cfg
from configs.text import clip_mnist_noisy, text_mnist, text_mnist_clip
from diffusion import guidance, parallel, samplers, schedules
from diffusion.text import contrastive
from diffusion.text.clip import CLIP
from diffusion.text.tokenizer import build_tokenizer
from experiments import build, inference, loop, results
from experiments.text import clip_guidance, clip_training
from tiny_configs import run_sample_cli, set_fields, shrink, tiny_clip_config

PROMPTS = ["a thick seven", "the digit 2, thin", "a small one"]


# ---- the guided function, on a tiny CLIP in float64 ----

@pytest.fixture(scope="module")
def tiny_clip():
    """(encode_image, g(c) of three prompts [3, E], 1/τ, log-scale) of a noise-aware CLIP on 8×8
    images at its random initialisation, in float64."""
    with jax.enable_x64(True):
        tok = build_tokenizer(PROMPTS)
        model = CLIP(tok.vocab_size, tok.max_length, embed_dim=8, image_features=(4, 8), text_width=8,
                     text_layers=1, text_heads=2, noise_aware=True)
        tokens = jnp.asarray(tok.encode(PROMPTS))
        params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), tokens[:1], jnp.zeros((1,), jnp.int32))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params["params"])
        encode_image = lambda x, t: model.apply({"params": params}, x, t, method=CLIP.encode_image)
        text_embedding = model.apply({"params": params}, tokens, method=CLIP.encode_text)
        return encode_image, text_embedding, float(contrastive.logit_scale(params["log_scale"])), params["log_scale"]


def inputs():
    schedule = schedules.make_schedule("linear", 1000, dtype=jnp.float64)
    x_t = jax.random.normal(jax.random.key(1), (3, 8, 8, 1), jnp.float64)
    return schedule, x_t, jnp.asarray([10, 400, 900])


def test_the_similarity_is_the_clips_own_logit(x64, tiny_clip):
    """(1/τ)·cos(f(x_t, t), g(c)) written out in NumPy, and the diagonal of the logits CLIP's
    InfoNCE loss trains (contrastive.info_nce): the guide climbs exactly what the CLIP learned."""
    encode_image, g, scale, log_scale = tiny_clip
    _, x_t, t = inputs()
    f = np.asarray(encode_image(x_t, t))
    gn = np.asarray(g)
    expected = np.exp(np.asarray(log_scale)) * np.sum(f * gn, -1) / np.linalg.norm(f, axis=-1) / np.linalg.norm(gn, axis=-1)
    similarity = guidance.clip_similarity(encode_image, scale)(x_t, t, g)
    np.testing.assert_allclose(similarity, expected, rtol=1e-12)
    np.testing.assert_allclose(similarity, np.diag(contrastive.info_nce(f, gn, log_scale)[1]), rtol=1e-12)


def test_the_gradient_term_is_a_central_difference_of_the_similarity(x64, tiny_clip):
    """ε̃ = ε − √(1−ᾱ_t)·w·∇s: (ε − ε̃)/(w√(1−ᾱ_t)) along random directions v against
    (s(x + hv) − s(x − hv))/2h, per sample (each row's similarity reads only its own x_t)."""
    encode_image, g, scale, log_scale = tiny_clip
    schedule, x_t, t = inputs()
    model_fn = lambda x, ts: 0.3 * x
    guided = guidance.clip(model_fn, encode_image, scale, schedule)
    w = 2.5
    grad = (model_fn(x_t, t) - guided(x_t, t, text_embedding=g, guidance_scale=w)) / (
        w * np.sqrt(1 - np.asarray(schedule.alphas_cumprod)[t])[:, None, None, None])

    def s(x):   # the similarity written out, not through guidance.clip_similarity
        f = encode_image(x, t)
        return jnp.exp(log_scale) * jnp.sum(f * g, -1) / jnp.linalg.norm(f, axis=-1) / jnp.linalg.norm(g, axis=-1)

    h = 1e-5
    for k in range(3):
        v = jax.random.normal(jax.random.key(10 + k), x_t.shape, jnp.float64)
        central = (s(x_t + h * v) - s(x_t - h * v)) / (2 * h)
        np.testing.assert_allclose(jnp.sum(grad * v, axis=(1, 2, 3)), central, rtol=1e-7, atol=1e-9)
    assert float(jnp.max(jnp.abs(grad))) > 1e-3           # a gradient that vanished would pass trivially


def test_at_w_zero_the_guided_model_is_the_unguided_one_and_the_prompt_reaches_the_model(x64, tiny_clip):
    """w = 0 rows (w may be per row) return the model's output bitwise; a text-conditioned model is
    given its tokens; without the text embedding the guided function says what it needs."""
    encode_image, g, scale, _ = tiny_clip
    schedule, x_t, t = inputs()
    model_fn = lambda x, ts, tokens: 0.3 * x + 0.01 * tokens.sum(-1)[:, None, None, None]
    tokens = jnp.asarray([[4, 5, 2], [6, 2, 0], [7, 8, 2]])
    guided = guidance.clip(model_fn, encode_image, scale, schedule)
    out = guided(x_t, t, tokens=tokens, text_embedding=g, guidance_scale=jnp.asarray([0.0, 3.0, 0.0]))
    unguided = model_fn(x_t, t, tokens)
    np.testing.assert_array_equal(out[0::2], unguided[0::2])
    assert not np.allclose(out[1], unguided[1])
    with pytest.raises(TypeError, match="steers towards 'text_embedding'"):
        guided(x_t, t, tokens=tokens, guidance_scale=1.0)


def test_one_ddpm_step_shifts_the_mean_by_the_closed_form(x64, tiny_clip):
    """With the same noise, x_{t−1}(w) − x_{t−1}(0) = β_t/√α_t · w·∇ₓs(x_t, t): the ε-form shift
    μ̃ − μ = (1/√α_t)·β_t/√(1−ᾱ_t)·√(1−ᾱ_t)·w∇s, i.e. GLIDE's s·Σ·∇ with Σ = β_t (fixed_large)
    over √α_t, derived here from Ho et al.'s eq. 11 rather than through the posterior the step uses."""
    encode_image, g, scale, _ = tiny_clip
    schedule, x_t, _ = inputs()
    model_fn = lambda x, ts: 0.3 * x
    guided = guidance.clip(model_fn, encode_image, scale, schedule)
    t, w, key = 500, 4.0, jax.random.key(3)
    step = lambda w: samplers.ddpm_step(guided, schedule, x_t, t, t - 1, key, variance="fixed_large",
                                        cond={"text_embedding": g, "guidance_scale": w})[0]
    ts = jnp.full((3,), t)
    grad = jax.grad(lambda x: jnp.sum(guidance.clip_similarity(encode_image, scale)(x, ts, g)))(x_t)
    beta = float(schedule.betas[t])
    np.testing.assert_allclose(step(w) - step(0.0), beta / np.sqrt(1 - beta) * w * grad, rtol=1e-9, atol=1e-12)


# ---- tiny trained runs: every sampler, the CLI, evaluate, refusals ----

@pytest.fixture(scope="module")
def noisy_clip(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("noisy_clip")
    clip_training.train_clip(tiny_clip_config(True), workdir)
    return workdir


@pytest.fixture(scope="module")
def unconditional_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("unconditional")
    # on the noised CLIP's linear schedule, as the text configs are (the main job's cosine would be refused)
    loop.train_and_evaluate(shrink(mnist.recipe_on_the_linear_schedule()), workdir)
    return workdir


@pytest.mark.parametrize("sampler", [name for name in samplers.SAMPLERS if name != "sddpm"])
@pytest.mark.system
def test_every_sampler_draws_with_clip_guidance(sampler, unconditional_run, noisy_clip):
    """Guidance wraps the model function every sampler calls: at w = 0 the draw is the unguided
    one, and a large w moves every sample (sddpm reads only seed 004's residual models)."""
    run = inference.load_run(unconditional_run)
    guide = clip_guidance.load(noisy_clip, run)
    condition = jax.tree.map(lambda a: np.repeat(a, 4, axis=0), clip_guidance.prompt_condition(run, guide, PROMPTS[:2]))
    mesh = parallel.make_mesh()
    draw = inference.build_draw_fn(run, mesh, sampler=sampler, steps=3, guide="clip", clip_guide=guide)
    unguided = inference.build_draw_fn(run, mesh, sampler=sampler, steps=3)
    key = jax.random.key(0)
    plain = unguided(run.params, key, inference.class_labels(run.config, 8), np.float32(0))
    np.testing.assert_allclose(draw(run.params, key, condition, np.float32(0)), plain, atol=1e-5)
    moved = np.asarray(draw(run.params, key, condition, np.float32(50)))
    assert np.all(np.isfinite(moved)) and np.all(np.abs(moved - plain).max(axis=(1, 2, 3)) > 1e-3)


@pytest.mark.system
def test_a_larger_scale_raises_the_similarity_of_samples_to_their_prompt(unconditional_run, noisy_clip):
    """GLIDE's CLIP score: (1/τ)·cos(f(x_0, 0), g(c)) of 16 DDIM-10 samples to their prompt, by the
    CLIP that guided them, rises with w (−0.95 → −0.73 → 0.6 when measured at w = 0, 10, 100 over
    three seeds; the margins asked are a third of that)."""
    run = inference.load_run(unconditional_run)
    guide = clip_guidance.load(noisy_clip, run)
    condition = jax.tree.map(lambda a: np.repeat(a, 8, axis=0), clip_guidance.prompt_condition(run, guide, PROMPTS[:2]))
    draw = inference.build_draw_fn(run, parallel.make_mesh(), sampler="ddim", steps=10, guide="clip", clip_guide=guide,
                                  clip="none")
    similarity = guidance.clip_similarity(guide.encode_image, guide.logit_scale)
    mean_similarity = [float(jnp.mean(similarity(draw(run.params, jax.random.key(0), condition, np.float32(w)),
                                                 jnp.zeros(16, jnp.int32), condition["text_embedding"])))
                       for w in (0.0, 10.0, 100.0)]
    assert mean_similarity[1] > mean_similarity[0] + 0.07 and mean_similarity[2] > mean_similarity[1] + 0.3

@pytest.mark.system
def test_the_cli_draws_clip_guided_prompt_grids_from_unconditional_and_text_runs(unconditional_run, tiny_text_run,
                                                                                 noisy_clip, tmp_path):
    """GLIDE's two settings: a diffusion model that reads no text, steered by the CLIP alone, and a
    text-conditioned one given the prompt as well."""
    for workdir, sampler in ((unconditional_run, "ddim"), (tiny_text_run, "dpmpp_2m")):
        out = tmp_path / workdir.name
        run_sample_cli("--workdir", str(workdir), "--prompt", "a thick seven", "--prompt", "the digit 2, thin",
                       "--guidance", "clip", "--clip_run", str(noisy_clip), "--scale", "5", "--sampler", sampler,
                       "--num", "3", "--batch", "8", "--steps", "2", "--trajectory", "--out", str(out))
        tag = f"{sampler}2_eta0_clip5_seed0"
        with np.load(out / f"{tag}.npz") as f:
            assert f["image"].shape == (6, 28, 28, 1) and f["image"].dtype == np.uint8
            assert list(f["prompt"]) == ["a thick seven"] * 3 + ["the digit 2, thin"] * 3
        assert (out / f"{tag}.png").exists() and (out / f"{tag}_trajectory.png").exists()


@pytest.mark.system
def test_evaluate_measures_clip_guided_samples_against_held_out_captions(unconditional_run, noisy_clip):
    rows, _ = results.evaluate_run(unconditional_run, [("ddim", 2, 0.0)],
                                   results.Draws(num=10, batch=8, guide="clip", scale=2.0, clip_run=str(noisy_clip)))
    row = rows[1]
    assert row["name"] == "ddim2_eta0_clip2" and row["guidance"] == "clip"
    assert 0.0 <= row["class_match"] <= 1.0 and 0.0 <= row["attribute_accuracy"]["all"] <= 1.0


def edited_clip(noisy_clip, tmp_path, **changes):
    """A copy of the noisy CLIP's config and tokenizer (no checkpoint: the refusals come first) with
    ``changes`` ({"section.field": value}) made."""
    where = tmp_path / "_".join(changes)
    where.mkdir()
    shutil.copy(noisy_clip / "tokenizer.json", where)
    config = json.loads((noisy_clip / "config.json").read_text())
    set_fields(config, changes)
    (where / "config.json").write_text(json.dumps(config))
    return where


@pytest.mark.system
def test_refusals(unconditional_run, noisy_clip, tmp_path):
    out = tmp_path / "never"
    base = ("--workdir", str(unconditional_run), "--steps", "2", "--num", "1", "--batch", "8", "--out", str(out))
    guided = ("--guidance", "clip", "--clip_run", str(noisy_clip))
    cases = [
        (("--guidance", "clip", "--prompt", "a seven"), "--guidance clip needs --clip_run"),
        (("--clip_run", str(noisy_clip), "--prompt", "a seven"), "is the CLIP of --guidance clip"),
        (guided, "steers towards a prompt: give --prompt"),
        ((*guided, "--prompt", ""), "towards the empty prompt: the CLIP .* was never trained on it"),
        ((*guided, "--prompt", "a purple seven"), r"outside the vocabulary of the CLIP .*'a purple seven': \['purple'\]"),
        ((*guided, "--prompt", " ".join(["seven"] * 40)), "the CLIP .* exceeds the model's context"),
        (("--guidance", "clip", "--clip_run", str(unconditional_run), "--prompt", "a seven"), "is not a CLIP run"),
        (("--guidance", "clip", "--clip_run", str(edited_clip(noisy_clip, tmp_path, **{"clip.noise_aware": False})),
          "--prompt", "a seven"), "a CLIP of clean images .*GLIDE §3.4"),
        (("--guidance", "clip", "--clip_run", str(edited_clip(noisy_clip, tmp_path, **{"data.image_size": 32})),
          "--prompt", "a seven"), "trained on 'mnist' images of 32×32×1; this run draws 'mnist' images of 28×28×1"),
        (("--guidance", "clip", "--clip_run", str(edited_clip(noisy_clip, tmp_path, **{"data.source": "x.npz"})),
          "--prompt", "a seven"), "trained on 'x.npz' images"),
        (("--guidance", "clip", "--clip_run",
          str(edited_clip(noisy_clip, tmp_path, **{"diffusion.schedule": "cosine"})), "--prompt", "a seven"),
         "the CLIP in .* was trained on another noise schedule \\(cosine, T=1000\\)"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            run_sample_cli(*base, *args)
    assert not out.exists()

    run = inference.load_run(unconditional_run)
    class_conditional = inference.Run(mnist_cfg.get_config(), None, run.schedule, None, 0)
    with pytest.raises(ValueError, match="this run is class-conditional"):
        clip_guidance.load(noisy_clip, class_conditional)
    with pytest.raises(ValueError, match="this run diffuses latents"):
        clip_guidance.load(noisy_clip, dataclasses.replace(run, latent=object()))
    with pytest.raises(ValueError, match="CLIP guidance needs a noised CLIP"):
        inference.build_draw_fn(run, parallel.make_mesh(), sampler="ddim", steps=2, guide="clip")


def test_the_text_configs_share_the_noised_clips_schedule_the_main_job_does_not():
    """configs/text/text_mnist.py (and text_mnist_clip through it) take the main job's recipe on the linear
    schedule configs/text/clip_mnist_noisy.py trains on, so CLIP guidance of them is not refused; the main
    job's cosine schedule (docs/main_job/recipe.md stage 11) would be."""
    clip_config = clip_mnist_noisy.get_config()
    for module in (text_mnist, text_mnist_clip):
        inference.check_schedule("runs/clip_mnist_noisy", clip_config, build.make_schedule(module.get_config()), "CLIP")
    with pytest.raises(ValueError, match=r"another noise schedule \(linear, T=1000\)"):
        inference.check_schedule("runs/clip_mnist_noisy", clip_config, build.make_schedule(mnist.get_config()), "CLIP")
