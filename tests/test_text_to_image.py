"""Text-to-image (issue 23; GLIDE, Nichol et al. 2022; Imagen, Saharia et al. 2022): the caption
reaches the U-Net through cross-attention and a vector in the time embedding, classifier-free
guidance with the null caption, caption dropout, captions carried by the data, a frozen CLIP text
tower, and a tiny text run trained, sampled from prompts and refused where it must be."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from configs import mnist_cfg
from configs.text import text_mnist, text_mnist_clip
from diffusion import guidance, parallel, reverse, schedules, training
from diffusion.models.conditioning import TextTokens
from diffusion.text import captions
from diffusion.text.tokenizer import build_tokenizer, END_ID, null_caption, PAD_ID, Tokenizer, TOKENIZER_FILE
from experiments import build, draw_cache, inference, loop, results, scoring
from experiments.text import captioning, clip_training
from tiny_configs import run_sample_cli, set_fields, tiny_text_config, tiny_unet, zeroed_params

PROMPTS = ["a thick seven", "the digit 2, thin", "a small one"]


@pytest.fixture(scope="module")
def text_unet():
    """(tokenizer, U-Net with a text encoder, its parameters, x_t [2, 8, 8, 1], t, two prompts' tokens)."""
    tok = build_tokenizer(PROMPTS)
    unet = tiny_unet(context_dim=16, context_encoder=TextTokens(tok.vocab_size, tok.max_length, 16, 1, 2))
    x, t = jax.random.normal(jax.random.key(0), (2, 8, 8, 1)), jnp.asarray([10, 600])
    tokens = jnp.asarray(tok.encode(PROMPTS[:2]))
    params = unet.init(jax.random.key(1), x, t, tokens=tokens)["params"]
    return tok, unet, params, x, t, tokens


def test_the_prompt_reaches_the_unet_by_cross_attention_and_the_time_embedding_only(text_unet):
    """GLIDE §3.1: the token sequence is the cross-attention context and the end token's feature is
    added to the time embedding. With each path zeroed the prompt still changes the output through
    the other; with both zeroed the output is bitwise the same for any prompt."""
    _, unet, params, x, t, tokens = text_unet
    apply = jax.jit(lambda p, tok: unet.apply({"params": p}, x, t, tokens=tok))
    swapped = tokens[::-1]
    differs = lambda p: float(jnp.max(jnp.abs(apply(p, tokens) - apply(p, swapped)))) > 1e-4
    no_cross = zeroed_params(params, "cross_attentions")
    no_pooled = zeroed_params(params, "pooled_text_projection")
    assert "pooled_text_projection" in params
    assert differs(params) and differs(no_cross) and differs(no_pooled)
    neither = zeroed_params(no_cross, "pooled_text_projection")
    np.testing.assert_array_equal(apply(neither, tokens), apply(neither, swapped))


def test_a_conditioning_vector_enters_the_time_embedding_through_its_projection():
    """``cond_vector`` (unCLIP's CLIP image embedding next) moves the output, not once its projection
    is zero, and a U-Net built with it refuses a call without it."""
    unet = tiny_unet()
    x, t = jnp.ones((2, 8, 8, 1)), jnp.asarray([3, 3])
    v = jax.random.normal(jax.random.key(2), (2, 5))
    params = unet.init(jax.random.key(0), x, t, cond_vector=v)["params"]
    out = lambda p, vec: unet.apply({"params": p}, x, t, cond_vector=vec)
    assert not np.allclose(out(params, v), out(params, 2 * v))
    flat = zeroed_params(params, "cond_vector_projection")
    np.testing.assert_array_equal(out(flat, v), out(flat, 2 * v))
    with pytest.raises(ValueError, match="initialised with cond_vector"):
        unet.apply({"params": params}, x, t)


def test_guidance_with_the_null_caption(text_unet):
    """ε̃ = (1 + w)·ε(x, c) − w·ε(x, ∅): w = 0 is the conditional pass, w = −1 the null caption's
    (the empty prompt, which caption dropout trains), w = 3 their combination."""
    tok, unet, params, x, t, tokens = text_unet
    model_fn = lambda x_, ts, **c: unet.apply({"params": params}, x_, ts, **c)
    null = null_caption(tok.max_length)
    np.testing.assert_array_equal(tok.encode([""])[0], null)
    guided = jax.jit(lambda w: guidance.classifier_free(model_fn, null_caption=null)(x, t, tokens=tokens,
                                                                                    guidance_scale=w))
    conditional = model_fn(x, t, tokens=tokens)
    unconditional = model_fn(x, t, tokens=jnp.broadcast_to(null, tokens.shape))
    assert not np.allclose(conditional, unconditional, atol=1e-4)
    np.testing.assert_allclose(guided(0.0), conditional, atol=1e-5)
    np.testing.assert_allclose(guided(-1.0), unconditional, atol=1e-5)
    np.testing.assert_allclose(guided(3.0), 4 * conditional - 3 * unconditional, atol=1e-4)
    with pytest.raises(ValueError, match="needs one null condition"):
        guidance.classifier_free(model_fn)
    with pytest.raises(ValueError, match="needs one null condition"):
        guidance.classifier_free(model_fn, 10, null_caption=null)


def test_dynamic_thresholding_composes_with_text_guidance(text_unet):
    """Imagen's dynamic threshold on the guided x̂_0 at large w: s = max(1, 99.5th percentile of
    |x̂_0|) per image, x̂_0 clipped to [−s, s] and divided by s (computed here in NumPy)."""
    tok, unet, params, x, t, tokens = text_unet
    schedule = schedules.make_schedule("linear", 1000)
    model_fn = lambda x_, ts, **c: unet.apply({"params": params}, x_, ts, **c)
    guided = guidance.classifier_free(model_fn, null_caption=null_caption(tok.max_length))
    cond = {"tokens": tokens, "guidance_scale": 8.0}
    raw = np.asarray(reverse.predict(guided, schedule, x, 900, cond).x0, np.float64)
    clipped = reverse.predict(guided, schedule, x, 900, cond, clip="dynamic").x0
    s = np.maximum(1.0, np.quantile(np.abs(raw).reshape(2, -1), 0.995, axis=1))[:, None, None, None]
    assert s.min() > 1.0     # the threshold acts
    np.testing.assert_allclose(clipped, np.clip(raw, -s, s) / s, atol=1e-5)


def test_caption_dropout_replaces_the_chosen_share_by_the_null_caption():
    """train_step's captions: each row is the null caption with probability p (GLIDE: 0.2) or its own,
    bitwise; the share over 4,000 rows within 4 standard errors √(p(1 − p)/n) of p."""
    n, length, rate = 4000, 5, 0.2
    tokens = np.full((n, length), PAD_ID, np.int32)
    tokens[:, 0], tokens[:, 1] = 3 + np.arange(n) % 7, END_ID
    schedule = schedules.make_schedule("linear", 1000)
    tx = optax.sgd(0.1)
    batch = {"image": jnp.zeros((n, 2, 2, 1)), "label": jnp.zeros((n,), jnp.int32), "tokens": jnp.asarray(tokens)}
    seen = []

    def apply_fn(variables, x, ts, *, train, rngs, tokens):   # records what the network was given
        seen.append(np.asarray(tokens))
        return x * variables["params"]["w"]

    for p in (rate, 0.0):
        state = training.create_train_state(jax.random.key(0), {"w": jnp.ones(())}, tx, 1000)
        training.train_step(state, batch, apply_fn=apply_fn, tx=tx, schedule=schedule,
                            loss_kwargs=dict(prediction="eps", variance="fixed_large"), caption_dropout=p)
        given = seen[-1]
        dropped = (given == null_caption(length)).all(1)
        np.testing.assert_array_equal(given[~dropped], tokens[~dropped])
        assert abs(dropped.mean() - p) <= 4 * np.sqrt(p * (1 - p) / n), dropped.mean()
    assert not dropped.any()


def test_every_image_carries_one_fixed_caption_in_the_runs_vocabulary():
    """data.captions: one caption per image, measured on it, the same on every load (a fixed template
    per image), tokenized by the run's tokenizer, whose vocabulary is every caption the templates
    can phrase: MNIST 2·3·10 + 2·10 + 2·10 + 2·2·3·10 + 3·2·10 + 3·10 = 310 captions, Fashion-MNIST
    2·2·10 + 2·10 + 2·10 + 2·2·10 = 120."""
    assert len(set(captions.every_caption("mnist"))) == 310
    assert len(set(captions.every_caption("fashion_mnist"))) == 120
    c = text_mnist.get_config()
    train, heldout = build.load_data(c)
    tok = captioning.tokenizer_of(c)
    assert train.tokens.shape == (len(train), tok.max_length) and train.tokens.dtype == np.int32
    assert heldout.tokens.shape == (len(heldout), tok.max_length)
    texts = tok.decode(train.tokens[:300])
    assert [captions.prompt_class("mnist", text) for text in texts] == list(train.labels[:300])
    assert captions.attribute_accuracy("mnist", train.images[:300], texts)["all"] == 1.0
    assert len(set(texts)) > 30
    np.testing.assert_array_equal(build.load_data(c)[0].tokens, train.tokens)
    tok.encode(captions.every_caption("mnist") + captions.class_prompts("mnist"), strict=True)


def test_a_run_keeps_its_tokenizer_and_refuses_another(tmp_path):
    """tokenizer.json is written at a run's start and read back by sampling; a resume or a sample
    whose config would give other ids is refused, as is a text run without one."""
    c = text_mnist.get_config()
    assert captioning.keep_tokenizer(c, tmp_path) == captioning.read_tokenizer(c, tmp_path) == captioning.tokenizer_of(c)
    build_tokenizer(["a thick seven"]).save(tmp_path / TOKENIZER_FILE)
    with pytest.raises(ValueError, match="holds another vocabulary than this config gives"):
        captioning.keep_tokenizer(c, tmp_path)
    with pytest.raises(ValueError, match="its token ids would be misread"):
        captioning.read_tokenizer(c, tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        captioning.read_tokenizer(c, tmp_path / "elsewhere")


# ---- a tiny text run, trained, sampled and refused ----



@pytest.mark.system
def test_a_text_run_trains_keeps_its_tokenizer_and_draws_a_labelled_prompt_grid(tiny_text_run, tmp_path):
    c = tiny_text_config()
    assert Tokenizer.load(tiny_text_run / TOKENIZER_FILE) == captioning.tokenizer_of(c)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the digit 2, thin\n\n")
    out = tmp_path / "out"
    run_sample_cli("--workdir", str(tiny_text_run), "--prompt", "a thick seven", "--prompts", str(prompts), "--num", "3",
                   "--batch", "8", "--steps", "2", "--guidance", "classifier_free", "--scale", "3", "--clip", "dynamic",
                   "--trajectory", "--out", str(out))
    tag = "ddim2_eta0_classifier_free3_seed0"
    with np.load(out / f"{tag}.npz") as f:
        assert f["image"].shape == (6, 28, 28, 1) and f["image"].dtype == np.uint8
        assert list(f["prompt"]) == ["a thick seven"] * 3 + ["the digit 2, thin"] * 3
    with Image.open(out / f"{tag}.png") as grid:
        # two blocks, each a 12-px line of text over one row of three 28-px images padded by 2: 2 × (12 + 32), ×2
        assert grid.height == 2 * 2 * (12 + 28 + 2 + 2)
    assert (out / f"{tag}_trajectory.png").exists()


@pytest.mark.system
def test_prompt_refusals(tiny_text_run, tmp_path):
    out = tmp_path / "never"
    common_args = ("--workdir", str(tiny_text_run), "--steps", "2", "--num", "1", "--batch", "8", "--out", str(out))
    cases = [
        ((), "this run is text-conditioned: give --prompt"),
        (("--prompt", "a purple seven", "--prompt", "a thick nine"),
         r"outside this run's vocabulary: 'a purple seven': \['purple'\]"),
        (("--prompt", "a thick thin small large upright seven"),
         "has 7 words; with the end token that exceeds the model's context of 7 tokens: shorten it to at most 6"),
        (("--prompt", "a seven", "--label", "7"), "text-conditioned; ask for the class in words, e.g. --prompt 'the digit 7'"),
        (("--prompt", "a seven", "--interpolate"), "--interpolate and --reconstruct are not implemented for prompts"),
        (("--prompts", str(tmp_path / "missing.txt")), "no such file"),
    ]
    for args, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            run_sample_cli(*common_args, *args)
    assert not out.exists()

    run = inference.load_run(tiny_text_run)
    np.testing.assert_array_equal(inference.prompt_tokens(run, [""])[0], null_caption(run.tokenizer.max_length))
    never_dropped = dataclasses.replace(run, config=run.config.copy_and_resolve_references())
    never_dropped.config.train.caption_dropout = 0.0
    with pytest.raises(ValueError, match="never saw in training"):
        inference.prompt_tokens(never_dropped, [""])
    with pytest.raises(ValueError, match="never saw in training"):
        inference.build_draw_fn(never_dropped, None, sampler="ddim", steps=2, guide="classifier_free")
    with pytest.raises(ValueError, match="classifier guidance steers towards a class label"):
        inference.build_draw_fn(run, None, sampler="ddim", steps=2, guide="classifier",
                               classifier_log_prob=lambda x, t, y: jnp.zeros(x.shape[:1]))
    untexted = inference.Run(mnist_cfg.get_config(), None, None, None, 0)
    with pytest.raises(ValueError, match="this run is not text-conditioned .* drop it \\(use --label"):
        inference.prompt_tokens(untexted, ["a seven"])
    with pytest.raises(ValueError, match="a text-conditioned run draws for prompts"):
        inference.draw_samples(run, None, parallel.make_mesh(), num=8, batch=8, seed=0)


def test_text_alignment_of_real_images_with_their_own_captions():
    """On held-out images and their own captions: the class match is the classifier's accuracy
    against the labels (the class each caption names), and every attribute asked for is shown."""
    c = text_mnist.get_config()
    heldout = build.load_data(c)[1]
    images, texts = heldout.images[:64], captioning.tokenizer_of(c).decode(heldout.tokens[:64])
    _, probs = scoring.classifier_features(parallel.make_mesh())(images)
    out = scoring.text_alignment("mnist", images, probs, texts)
    assert out["class_match"] == pytest.approx(np.mean(np.argmax(probs, -1) == heldout.labels[:64]))
    assert out["class_match"] > 0.9 and out["attribute_accuracy"]["all"] == 1.0


@pytest.mark.system
def test_evaluate_a_text_run_on_held_out_captions(tiny_text_run):
    rows, nlls = results.evaluate_run(tiny_text_run, [("ddim", 2, 0.0)], results.Draws(num=10, batch=8),
                                      results.Measures(nll_examples=8))
    row = rows[1]
    assert 0.0 <= row["class_match"] <= 1.0 and 0.0 <= row["attribute_accuracy"]["all"] <= 1.0
    assert np.isfinite(nlls["vlb"]["bits_per_dim"])      # conditioned on each held-out image's caption
    assert "prompt's class" in (tiny_text_run / "eval" / "results.md").read_text()


@pytest.mark.system
def test_held_out_prompts_are_the_captions_whoever_tokenized_the_split(tiny_text_run):
    """The prompts a run is measured on are its held-out images' captions: the very token ids its
    own tokenizer wrote into the split it captioned, and the same when the split's ids are another
    tokenizer's (a study hands every text run one split) or absent."""
    run = inference.load_run(tiny_text_run)
    heldout = build.load_data(run.config)[1]
    prompts = draw_cache.heldout_prompts(run, heldout, 6)
    np.testing.assert_array_equal(run.tokenizer.encode(prompts, strict=True), heldout.tokens[:6])
    assert len(set(prompts)) > 1
    foreign = dataclasses.replace(heldout, tokens=np.roll(heldout.tokens, 1, axis=0))
    assert draw_cache.heldout_prompts(run, foreign, 6) == prompts
    assert draw_cache.heldout_prompts(run, dataclasses.replace(heldout, tokens=None), 6) == prompts


# ---- the frozen CLIP text tower ----

@pytest.mark.system
def test_clip_text_reads_the_frozen_tower_and_its_tokenizer(tiny_clip_run, tmp_path):
    """An Imagen-style run on the CLIP's text tower: the run keeps the CLIP's tokenizer, its trained
    parameters hold no text tower, and the tower it reads after training is the CLIP checkpoint's,
    bitwise, giving the CLIP's own token features."""
    c = tiny_text_config(text_mnist_clip)
    c.model.clip_run, c.train.num_steps = str(tiny_clip_run), 2
    clip_model, clip_params, clip_tokenizer, _ = clip_training.load_clip(tiny_clip_run)
    state = loop.train_and_evaluate(c, tmp_path / "run")
    assert Tokenizer.load(tmp_path / "run" / TOKENIZER_FILE) == clip_tokenizer
    assert "context_encoder" not in state.params and "pooled_text_projection" in state.params
    run = inference.load_run(tmp_path / "run")
    tower = run.model.context_encoder
    for a, b in zip(jax.tree.leaves(tower.params), jax.tree.leaves(clip_params["text_tower"]), strict=True):
        np.testing.assert_array_equal(a, b)
    tokens = jnp.asarray(clip_tokenizer.encode(["a thick seven", "the digit 2"]))
    np.testing.assert_array_equal(tower(tokens), clip_model.apply({"params": clip_params}, tokens,
                                                                  method=lambda m, t: m.text_tower(t)))
    with pytest.raises(ValueError, match="built without its pretrained parameters"):
        build.make_model(c, load_frozen=False).context_encoder(tokens)


# ---- configs refused before any work ----

@pytest.mark.parametrize("changes,message", [
    ({"data.captions": ""}, "reads captions: set data.captions to one of"),
    ({"model.context_encoder": "", "model.context_dim": 0}, "give the model captions, but model.context_encoder=''"),
    ({"train.caption_dropout": 1.0}, r"train.caption_dropout=1.0 is the share .* in \[0, 1\)"),
    ({"model.num_classes": 10}, "conditions on the caption alone .* set model.num_classes=0"),
    ({"model.text_heads": 3}, "the heads dividing model.context_dim=16"),
    ({"train.eval_every": 10}, "train.eval_every's held-out loss reads class labels"),
    ({"model.context_encoder": "clip_text", "model.clip_run": "runs/none"}, "model.clip_run='runs/none' is not a CLIP run"),
    ({"data.image_size": 32, "model.attention_resolutions": (16,)}, "captions are measured on 28×28 one-channel"),
])
def test_bad_text_configs_are_refused(tmp_path, changes, message):
    c = set_fields(tiny_text_config(), changes)
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.system
def test_a_clip_run_of_another_width_or_domain_is_refused(tiny_clip_run):
    c = tiny_text_config(text_mnist_clip)
    c.model.clip_run, c.model.context_dim = str(tiny_clip_run), 32
    with pytest.raises(ValueError, match="text tower is 16 wide: set model.context_dim=16"):
        build.validate(c)
    c.model.context_dim, c.data.captions = 16, "fashion_mnist"
    with pytest.raises(ValueError, match="was trained on 'mnist' captions, not data.captions='fashion_mnist'"):
        build.validate(c)
