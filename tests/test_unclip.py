"""unCLIP (Ramesh et al. 2022): the prior's training pairs are the frozen CLIP's embeddings of the same
images and captions, its network masks the caption's padding, the decoder reads the image embedding
through the time embedding and its extra context tokens only, the null embedding is the
unconditional pass, the paper's dropout, and tiny stages trained, sampled through
``experiments.sample --unclip`` / ``--variations`` in process and refused where they must be."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.unclip import decoder_mnist, prior_mnist
from diffusion import guidance, parallel
from diffusion.data import datasets
from diffusion.text.tokenizer import END_ID, null_caption, PAD_ID
from diffusion.unclip import embedding
from diffusion.unclip.prior import FrozenCLIPText
from experiments import build, loop
from experiments.text import clip_runs
from experiments.unclip import stage_runs
from tiny_configs import run_sample_cli, set_fields, tiny_clip_config, tiny_unet, zeroed_params

PROMPTS = ["a thick seven", "the digit 2, thin"]


def _tiny_training(c, steps=4):
    c.train.batch_size, c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 16, steps, 1, 2
    c.optim.warmup_steps = 2
    return c


def tiny_prior_config(tiny_clip_run):
    c = _tiny_training(prior_mnist.get_config())
    c.model.clip_run, c.model.context_dim = str(tiny_clip_run), 16      # the tiny CLIP's text width
    c.unclip.width, c.unclip.layers, c.unclip.heads = 16, 1, 2
    c.sample.steps = 2
    return c


def tiny_decoder_config(tiny_clip_run):
    c = _tiny_training(decoder_mnist.get_config())
    c.model.clip_run, c.model.context_dim = str(tiny_clip_run), 8
    c.model.base_channels, c.model.channel_mult, c.model.num_res_blocks = 8, (1, 2), 1
    c.model.attention_resolutions, c.model.norm_groups = (14,), 4
    c.sample.steps = 2
    return c


@pytest.fixture(scope="module")
def prior_dir(tiny_clip_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("prior")
    loop.train_and_evaluate(tiny_prior_config(tiny_clip_run), workdir)
    return workdir


@pytest.fixture(scope="module")
def decoder_dir(tiny_clip_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("decoder")
    loop.train_and_evaluate(tiny_decoder_config(tiny_clip_run), workdir)
    return workdir


# ---- the embeddings both stages read ----

@pytest.mark.system
def test_the_priors_training_pairs_are_the_clips_embeddings_of_the_same_images_and_captions(tiny_clip_run):
    """Pairs computed once (``prior_training_data``): each image's z_i is CLIP's encode_image of it,
    scaled to √E·z/‖z‖ (computed here in NumPy from ``clip_runs.embed_images``); its caption's
    tokens are kept, and the prior's text side gives CLIP's encode_text of them."""
    c = tiny_prior_config(tiny_clip_run)
    train = build.load_data(c)[0]
    split = datasets.Split(train.images[:40], train.labels[:40], tokens=train.tokens[:40])
    mesh = parallel.make_mesh()
    pairs = stage_runs.prior_training_data(c, split, mesh)
    model, params, _, _ = clip_runs.load_clip(tiny_clip_run)
    raw = clip_runs.embed_images(model, params, split.images, mesh).astype(np.float64)
    expected = raw * np.sqrt(raw.shape[1]) / np.linalg.norm(raw, axis=1, keepdims=True)
    assert pairs.images.shape == (40, 16) and pairs.images.dtype == np.float32
    np.testing.assert_allclose(pairs.images, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.sum(pairs.images.astype(np.float64) ** 2, 1), 16.0, rtol=1e-5)
    np.testing.assert_array_equal(pairs.tokens, split.tokens)
    np.testing.assert_array_equal(pairs.labels, split.labels)
    prior = build.make_model(c)
    features, text_embedding = prior.text_encoder(jnp.asarray(split.tokens))
    np.testing.assert_allclose(text_embedding, clip_runs.embed_texts(model, params, split.tokens, mesh), atol=1e-5)
    assert features.shape == split.tokens.shape + (16,)


# ---- the prior's network ----

@pytest.fixture(scope="module")
def tiny_prior(tiny_clip_run):
    """(prior network over the tiny CLIP, its parameters, z at t [2, 16], t, two prompts' tokens)."""
    prior = stage_runs.make_prior(tiny_prior_config(tiny_clip_run), 16)
    _, _, tokenizer, _ = clip_runs.load_clip(tiny_clip_run)
    tokens = jnp.asarray(tokenizer.encode(PROMPTS))
    x, t = jax.random.normal(jax.random.key(0), (2, 16)), jnp.asarray([5, 700])
    return prior, prior.init(jax.random.key(1), x, t, tokens=tokens)["params"], x, t, tokens


@pytest.mark.system
def test_the_prior_reads_the_caption_and_z_t_but_not_the_padding(tiny_prior):
    """unCLIP §2.2's sequence: the output moves with the caption and with the noised z_i, is the same
    whatever ids stand after the end token (padding is masked as a key, and causality keeps it from
    every earlier position), and the frozen CLIP is not among the prior's parameters."""
    prior, params, x, t, tokens = tiny_prior
    apply = jax.jit(lambda tok, x_: prior.apply({"params": params}, x_, t, tokens=tok))
    out = apply(tokens, x)
    assert out.shape == (2, 16)
    assert not np.allclose(out, apply(tokens[::-1], x), atol=1e-5)
    assert not np.allclose(out, apply(tokens, 2 * x), atol=1e-5)
    after_end = np.arange(tokens.shape[1])[None] > np.argmax(np.asarray(tokens) == END_ID, axis=1)[:, None]
    assert after_end.any()
    junk = np.where(after_end, 5, np.asarray(tokens))          # a word id where the padding was
    assert (np.asarray(tokens)[after_end] == PAD_ID).all()
    np.testing.assert_allclose(apply(jnp.asarray(junk), x), out, atol=1e-6)
    assert set(params) >= {"token_projection", "text_embedding_projection", "noised_embedding_projection", "query"}
    assert not any("clip" in name or "text_tower" in name for name in params)
    with pytest.raises(ValueError, match="built without its trained parameters"):
        FrozenCLIPText(prior.text_encoder.clip, None)(tokens)


@pytest.mark.system
def test_prior_guidance_at_zero_is_the_conditional_pass_and_at_minus_one_the_null_caption(tiny_prior):
    prior, params, x, t, tokens = tiny_prior
    model_fn = lambda x_, ts, **c: prior.apply({"params": params}, x_, ts, **c)
    null = null_caption(tokens.shape[1])
    guided = guidance.classifier_free(model_fn, null_caption=null, variance="fixed_small")
    conditional = model_fn(x, t, tokens=tokens)
    unconditional = model_fn(x, t, tokens=jnp.broadcast_to(null, tokens.shape))
    assert not np.allclose(conditional, unconditional, atol=1e-5)
    np.testing.assert_allclose(guided(x, t, tokens=tokens, guidance_scale=0.0), conditional, atol=1e-5)
    np.testing.assert_allclose(guided(x, t, tokens=tokens, guidance_scale=-1.0), unconditional, atol=1e-5)


# ---- the decoder's conditioning ----

@pytest.fixture(scope="module")
def tiny_decoder():
    unet = tiny_unet(context_dim=8, vector_tokens=4)
    x, t = jax.random.normal(jax.random.key(0), (2, 8, 8, 1)), jnp.asarray([10, 600])
    z = embedding.embedding_space(jax.random.normal(jax.random.key(2), (2, 6)))
    return unet, unet.init(jax.random.key(1), x, t, cond_vector=z)["params"], x, t, z


def test_the_decoder_reads_the_embedding_through_the_time_embedding_and_four_context_tokens_only(tiny_decoder):
    """unCLIP §2.1: z_i is projected into the time embedding and into 4 extra cross-attention tokens.
    With either projection zeroed z_i still moves the output through the other; with both zeroed the
    output is bitwise the same for any z_i."""
    unet, params, x, t, z = tiny_decoder
    assert params["cond_vector_tokens"]["kernel"].shape == (6, 4 * 8)
    apply = jax.jit(lambda p, z_: unet.apply({"params": p}, x, t, cond_vector=z_))
    other = z[::-1]
    differs = lambda p: float(jnp.max(jnp.abs(apply(p, z) - apply(p, other)))) > 1e-4
    no_tokens, no_projection = zeroed_params(params, "cond_vector_tokens"), zeroed_params(params, "cond_vector_projection")
    assert differs(params) and differs(no_tokens) and differs(no_projection)
    neither = zeroed_params(no_tokens, "cond_vector_projection")
    np.testing.assert_array_equal(apply(neither, z), apply(neither, other))


def test_decoder_guidance_with_the_null_embedding(tiny_decoder):
    """ε̃ = (1 + w)·ε(x, z_i) − w·ε(x, 0): w = 0 is the conditional pass, w = −1 the null (zero)
    embedding's, the unconditional model the 10% dropout trains; w = 3 their combination."""
    unet, params, x, t, z = tiny_decoder
    model_fn = lambda x_, ts, **c: unet.apply({"params": params}, x_, ts, **c)
    guided = guidance.classifier_free(model_fn, null_embedding=embedding.null_embedding(1, 6))
    conditional = model_fn(x, t, cond_vector=z)
    unconditional = model_fn(x, t, cond_vector=jnp.zeros_like(z))
    assert not np.allclose(conditional, unconditional, atol=1e-4)
    np.testing.assert_allclose(guided(x, t, cond_vector=z, guidance_scale=0.0), conditional, atol=1e-5)
    np.testing.assert_allclose(guided(x, t, cond_vector=z, guidance_scale=-1.0), unconditional, atol=1e-5)
    np.testing.assert_allclose(guided(x, t, cond_vector=z, guidance_scale=3.0), 4 * conditional - 3 * unconditional,
                               atol=1e-4)
    with pytest.raises(ValueError, match="needs one null condition"):
        guidance.classifier_free(model_fn, 10, null_embedding=0.0)


def test_decoder_guidance_drops_the_caption_and_the_embedding_together():
    """A decoder that reads a caption too: its unconditional pass has the null caption and the null
    embedding (what a model function receives is recorded)."""
    seen = {}

    def model_fn(x, ts, *, tokens, cond_vector):
        seen.update(tokens=np.asarray(tokens), cond_vector=np.asarray(cond_vector))
        return x
    tokens, z = jnp.asarray([[5, END_ID, PAD_ID]] * 2), jnp.ones((2, 4))
    guided = guidance.classifier_free(model_fn, null_caption=null_caption(3), null_embedding=jnp.zeros((1, 4)))
    guided(jnp.ones((2, 3)), jnp.zeros((2,), jnp.int32), tokens=tokens, cond_vector=z, guidance_scale=1.0)
    np.testing.assert_array_equal(seen["tokens"], np.concatenate([tokens, np.tile(null_caption(3), (2, 1))]))
    np.testing.assert_array_equal(seen["cond_vector"], np.concatenate([np.ones((2, 4)), np.zeros((2, 4))]))


def test_embedding_dropout_replaces_the_chosen_share_by_the_null_embedding():
    """The decoder's training condition: each row's embedding is the zero vector with probability
    p = 0.1 (unCLIP §2.1) or embed(x0), bitwise; the share over 4,000 rows within 4 standard errors
    √(p(1 − p)/n) of p; none at p = 0."""
    n, p = 4000, 0.1
    x0 = jax.random.normal(jax.random.key(0), (n, 3))
    embed = lambda x: embedding.embedding_space(x @ jnp.arange(6.0).reshape(3, 2) + 1.0)
    keys = jax.random.split(jax.random.key(1), n)
    for rate in (p, 0.0):
        z = np.asarray(embedding.decoder_condition(keys, x0, embed=embed, dropout=rate)["cond_vector"])
        dropped = (z == 0).all(1)
        np.testing.assert_array_equal(z[~dropped], np.asarray(embed(x0))[~dropped])
        assert abs(dropped.mean() - rate) <= 4 * np.sqrt(rate * (1 - rate) / n), dropped.mean()
    assert not dropped.any()


# ---- tiny stages trained, sampled and refused ----

@pytest.mark.system
def test_unclip_trains_both_stages_and_draws_a_labelled_prompt_grid(prior_dir, decoder_dir, tmp_path):
    assert not (prior_dir / "samples").exists() and not (decoder_dir / "samples").exists()   # no grid drawn alone
    out = tmp_path / "out"
    run_sample_cli("--unclip", f"{prior_dir},{decoder_dir}", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
                   "--num", "3", "--batch", "8", "--steps", "2", "--scales", "1,3", "--out", str(out))
    tag = "unclip_ddim2_w1,3_seed0"
    with np.load(out / f"{tag}.npz") as f:
        assert f["image"].shape == (6, 28, 28, 1) and f["image"].dtype == np.uint8
        assert list(f["prompt"]) == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
        assert f["embedding"].shape == (6, 16) and np.isfinite(f["embedding"]).all()
    with Image.open(out / f"{tag}.png") as grid:
        # two blocks, each a 12-px line of text over one row of three 28-px images padded by 2: 2 × (12 + 32), ×2
        assert grid.height == 2 * 2 * (12 + 28 + 2 + 2)


@pytest.mark.system
def test_unclip_is_measured_on_held_out_captions_like_a_text_run(prior_dir, decoder_dir, tiny_clip_run):
    """experiments.evaluate --unclip: the prior's embeddings for the held-out captions, decoded, with
    FID, the prompt alignment and the CLIP score; drawn once (a rerun reads the kept samples)."""
    from experiments.unclip import generation
    s = generation.Settings(sampler="ddim", steps=2, eta=0.0, clip=None, num=10, batch=8, seed=0)
    record = generation.evaluate([prior_dir, decoder_dir], ["0", "2"], s, clip_score_run=str(tiny_clip_run))
    assert np.isfinite(record["fid"]) and record["num"] == 10 and record["scales"] == [0.0, 2.0]
    assert 0.0 <= record["class_match"] <= 1.0 and -100.0 <= record["clip_score"] <= 100.0
    tag = "unclip_ddim2_eta0_w0,2"
    assert json.loads((decoder_dir / "eval" / f"{tag}.json").read_text())["class_match"] == record["class_match"]
    kept, = (decoder_dir / "eval").glob(f"samples_{tag}_seed0_step4,4.npz")
    stamp = kept.stat().st_mtime_ns
    again = generation.evaluate([prior_dir, decoder_dir], ["0", "2"], s)
    assert kept.stat().st_mtime_ns == stamp and again["fid"] == record["fid"] and "clip_score" not in again
    with pytest.raises(ValueError, match="the prior's workdir, then the decoder's"):
        generation.evaluate([decoder_dir, prior_dir], ["0", "2"], s)


@pytest.mark.system
def test_variations_decode_an_images_clip_embedding(decoder_dir, tmp_path):
    """--variations: a held-out index or a PNG; the image above its --num variations."""
    out = tmp_path / "out"
    common_args = ("--workdir", str(decoder_dir), "--num", "3", "--batch", "8", "--steps", "2", "--out", str(out))
    run_sample_cli(*common_args, "--variations", "0", "--scale", "2")
    with np.load(out / "variations_heldout0_ddim2_w2_seed0.npz") as f:
        assert f["image"].shape == (3, 28, 28, 1) and f["source"].shape == (1, 28, 28, 1)
        np.testing.assert_allclose(np.sum(f["embedding"].astype(np.float64) ** 2), 16.0, rtol=1e-5)
    png = tmp_path / "digit.png"
    Image.fromarray(np.tile(np.arange(56, dtype=np.uint8)[None] * 4, (56, 1))).save(png)   # 56×56: resized to 28
    run_sample_cli(*common_args, "--variations", str(png))
    with np.load(out / "variations_digit_ddim2_w0_seed0.npz") as f:
        assert f["image"].shape == (3, 28, 28, 1) and f["source"].shape == (1, 28, 28, 1)


@pytest.mark.system
def test_unclip_refusals(prior_dir, decoder_dir, tiny_clip_run, tmp_path):
    out = tmp_path / "never"
    other_clip = tmp_path / "other_clip"
    shutil.copytree(tiny_clip_run, other_clip)
    elsewhere = tmp_path / "decoder_on_another_clip"
    elsewhere.mkdir()
    config = json.loads((decoder_dir / "config.json").read_text())
    config["model"]["clip_run"] = str(other_clip)
    (elsewhere / "config.json").write_text(json.dumps(config))
    both = f"{prior_dir},{decoder_dir}"
    draw = ("--num", "1", "--batch", "8", "--steps", "2", "--out", str(out))
    cases = [
        (("--unclip", f"{prior_dir},{elsewhere}", "--prompt", "a seven"), "they are different spaces"),
        (("--unclip", f"{decoder_dir},{prior_dir}", "--prompt", "a seven"), "where the unclip_prior belongs"),
        (("--unclip", str(prior_dir), "--prompt", "a seven"), "takes two workdirs"),
        (("--workdir", str(decoder_dir)), "draws from a CLIP image embedding: give it one"),
        (("--workdir", str(prior_dir), "--prompt", "a seven"), "its samples are CLIP image embeddings"),
        (("--unclip", both, "--prompt", "a purple seven"), r"outside this run's vocabulary: 'a purple seven': \['purple'\]"),
        (("--unclip", both, "--prompt", " ".join(["seven"] * 40)), "exceeds the model's context"),
        (("--unclip", both), "this run is text-conditioned: give --prompt"),
        (("--unclip", both, "--prompt", "a seven", "--scales", "1,2,3"), "gives 3 values for 2 stages"),
        (("--unclip", both, "--prompt", "a seven", "--trajectory"), "do not read --trajectory"),
        (("--workdir", str(decoder_dir), "--variations", "0", "--prompt", "a seven"), "do not read --prompt"),
        (("--workdir", str(decoder_dir), "--variations", "100000"), "held-out images: use 0"),
        (("--workdir", str(decoder_dir), "--variations", "nothing.png"), "neither an image file nor a held-out index"),
        (("--workdir", str(prior_dir), "--variations", "0"), "is not an unCLIP decoder"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            run_sample_cli(*args, *draw)
    assert not out.exists()


@pytest.mark.parametrize("stage,changes,message", [
    ("prior", {"model.context_encoder": "text"}, "set model.context_encoder='clip_text'"),
    ("prior", {"sample.clip": "static"}, "set diffusion.decoder='gaussian' .* sample.clip='none'"),
    ("prior", {"unclip.heads": 3}, "must split into unclip.heads=3"),
    ("decoder", {"unclip.embedding_dropout": 1.0}, r"unclip.embedding_dropout=1.0 .* in \[0, 1\)"),
    ("decoder", {"unclip.embedding_tokens": 0}, "set it >= 1 and model.context_dim > 0"),
    ("decoder", {"model.clip_run": "runs/none"}, "model.clip_run='runs/none' is not a CLIP run"),
    ("decoder", {"train.eval_every": 10}, "gives the network no CLIP embedding"),
    ("prior", {"data.random_flip": True}, "data.random_flip mirrors images left–right, but this run trains on CLIP"),
    ("decoder", {"model.num_classes": 10}, "no labels: set data.autoencoder='', data.low_resolution=0"),
])
@pytest.mark.system
def test_bad_unclip_configs_are_refused_before_any_work(tiny_clip_run, tmp_path, stage, changes, message):
    c = (tiny_prior_config if stage == "prior" else tiny_decoder_config)(tiny_clip_run)
    set_fields(c, changes)
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_noise_aware_clip_is_refused(tmp_path_factory):
    noisy = tmp_path_factory.mktemp("noisy_clip")
    (noisy / "config.json").write_text(json.dumps(tiny_clip_config(True).to_dict(), default=list))
    (noisy / "tokenizer.json").write_text("{}")
    c = tiny_decoder_config(noisy)
    with pytest.raises(ValueError, match="is noise-aware"):
        build.validate(c)
