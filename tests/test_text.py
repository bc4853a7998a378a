"""The text side of text-to-image (issue 23): captions measured on images, the tokenizer, CLIP's
InfoNCE loss and temperature (Radford et al. 2021), its retrieval metrics, the noise-aware image
tower (GLIDE, Nichol et al. 2022), the text encoder τθ for the U-Net, and ``train_clip`` end to end."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion import training
from diffusion.data import datasets
from diffusion.models.conditioning import end_pooled, TextTokens
from diffusion.models.unet import UNet
from diffusion.text import captions, contrastive
from diffusion.text.clip import CLIP, ImageTower
from diffusion.text.tokenizer import build_tokenizer, END_ID, PAD_ID, split_words, Tokenizer, UNKNOWN_ID
from tiny_configs import set_fields, tiny_clip_config


def canvas(n=1):
    return np.zeros((n, 28, 28, 1), np.uint8)


# ---- attributes measured on constructed images ----

@pytest.mark.parametrize("width,length,vertical", [(1, 20, True), (3, 16, True), (2, 18, False), (4, 4, True)])
def test_thickness_of_a_bar_is_its_width(width, length, vertical):
    img = canvas()
    if vertical:
        img[0, 5:5 + length, 10:10 + width] = 255
    else:
        img[0, 10:10 + width, 5:5 + length] = 255
    np.testing.assert_allclose(captions.stroke_thickness(img), [width], atol=1e-12)


@pytest.mark.parametrize("shear", [-0.5, 0.0, 0.3, 0.6])
def test_slant_of_a_sheared_line_is_its_shear(shear):
    """Row r holds unit mass centred at column c₀ + s·(r̄ − r), split linearly between two pixels,
    so −μ₁₁/μ₀₂ = s exactly (up to float32)."""
    u = np.zeros((28, 28))
    rows = np.arange(4, 24)
    centre = 13 + shear * (rows.mean() - rows)
    left = np.floor(centre).astype(int)
    u[rows, left] = 1 - (centre - left)
    u[rows, left + 1] += centre - left
    x = (2 * u - 1)[None, ..., None].astype(np.float32)       # model range [−1, 1], as samples are
    np.testing.assert_allclose(captions.slant(x), [shear], atol=1e-5)
    expected = "left-slanted" if shear < -0.2 else "right-slanted" if shear > 0.2 else "upright"
    assert captions.describe("mnist", x, [1])["slant"][0] == expected


def test_size_is_judged_within_the_class_and_shade_on_the_object():
    img = canvas(2)
    img[0, 4:14, 4:16] = 255            # 10 × 12 = 120 px: below a "1"'s median 160 box
    img[1, 4:17, 4:17] = 120            # 13 × 13 = 169 px at intensity 0.47: dark
    np.testing.assert_array_equal(captions.box_area(img, captions.OBJECT), [120, 169])
    assert list(captions.describe("mnist", img[:1], [1])["size"]) == ["small"]
    assert list(captions.describe("mnist", img[:1], [0])["size"]) == ["small"]      # a "0" box is 340
    fashion = captions.describe("fashion_mnist", img, [1, 1])
    assert list(fashion["size"]) == ["small", "small"] and list(fashion["shade"]) == ["light", "dark"]
    np.testing.assert_allclose(captions.shade(img), [1.0, 120 / 255])


def test_measurements_agree_on_uint8_and_model_range_images():
    images = datasets.load_splits("mnist", image_size=28, holdout_fraction=0.1)[1].images[:32]
    floats = datasets.to_model_range(images)
    for measure in (captions.stroke_thickness, captions.slant, captions.box_area, captions.shade):
        np.testing.assert_allclose(measure(images), measure(floats), atol=1e-6)


# ---- captions ----

@pytest.fixture(scope="module")
def heldout():
    return datasets.load_splits("mnist", image_size=28, holdout_fraction=0.1)[1]


def test_captions_are_deterministic_per_seed_and_name_the_class(heldout):
    images, labels = heldout.images[:200], heldout.labels[:200]
    first = captions.captions("mnist", images, labels, seed=3)
    assert first == captions.captions("mnist", images, labels, seed=3)
    assert first != captions.captions("mnist", images, labels, seed=4)
    assert [captions.prompt_class("mnist", c) for c in first] == list(labels)
    assert len({c.split(",")[0] for c in first}) > 10          # several templates
    # a caption describes its own image: every attribute it names is measured there
    assert captions.attribute_accuracy("mnist", images, first)["all"] == 1.0


def test_fashion_captions_name_the_garment():
    img = canvas(2)
    img[:, 2:26, 8:20] = 90
    out = captions.captions("fashion_mnist", img, [1, 9], seed=0)
    assert [captions.prompt_class("fashion_mnist", c) for c in out] == [1, 9]
    assert captions.class_prompts("fashion_mnist")[1] == "a trouser"
    assert captions.class_prompts("mnist")[7] == "the digit 7"
    assert captions.prompt_class("fashion_mnist", "a dark t-shirt") == 0      # not "shirt"


def test_attribute_accuracy_counts_requested_attributes_only():
    img = canvas(2)
    img[:, 4:24, 12:14] = 255          # an upright bar 2 px wide: thick (w >= 2), upright
    acc = captions.attribute_accuracy("mnist", img, ["a thick one", "a thin, left-slanted one"])
    assert acc["thickness"] == 0.5 and acc["slant"] == 0.0 and np.isnan(acc["size"])
    assert acc["all"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("call,message", [
    (lambda: captions.prompt_class("mnist", "a thick cat"), "names no class"),
    (lambda: captions.prompt_class("mnist", "a seven or a 3"), "several classes"),
    (lambda: captions.prompt_class("fashion_mnist", "a sock"), "names no class"),
    (lambda: captions.class_names("cifar"), "unknown caption domain"),
    (lambda: captions.describe("mnist", canvas(2), [0]), "one class in"),
    (lambda: captions.describe("mnist", np.zeros((1, 28, 28, 3), np.uint8), [0]), "one-channel"),
    (lambda: captions.attribute_accuracy("mnist", canvas(2), ["a one"]), "one prompt per image"),
])
def test_bad_caption_input_is_refused_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---- tokenizer ----

def test_tokenizer_round_trip_unknown_words_and_limits(tmp_path):
    texts = ["a thick, right-slanted seven", "the digit 7, thin", "a small t-shirt"]
    tok = build_tokenizer(texts)
    assert tok.max_length == 5 and tok.words[:3] == ("<pad>", "<unk>", "<end>")
    ids = tok.encode(texts)
    assert ids.shape == (3, 5) and ids.dtype == np.int32
    assert tok.decode(ids) == [" ".join(split_words(t)) for t in texts]
    assert list(ids[1]) == [tok.words.index(w) for w in ("the", "digit", "7", "thin")] + [END_ID]
    unknown = tok.encode(["a purple seven"])[0]
    assert list(unknown[:4]) == [tok.words.index("a"), UNKNOWN_ID, tok.words.index("seven"), END_ID]
    assert tok.unknown_words("a purple seven") == ["purple"]
    assert list(tok.encode([""])[0]) == [END_ID] + [PAD_ID] * 4           # the null caption
    with pytest.raises(ValueError, match="outside the vocabulary: \\['purple'\\]"):
        tok.encode(["a purple seven"], strict=True)
    with pytest.raises(ValueError, match="5 words; with the end token that exceeds the model's context of 5"):
        tok.encode(["a thick thin small seven"])
    tok.save(tmp_path / "tok.json")
    assert Tokenizer.load(tmp_path / "tok.json") == tok


@pytest.mark.parametrize("texts", [[], ["", ", !"]])
def test_an_empty_vocabulary_is_refused(texts):
    with pytest.raises(ValueError, match="no words in the"):
        build_tokenizer(texts)
    with pytest.raises(ValueError, match="at least one word"):
        Tokenizer(("<pad>", "<unk>", "<end>"), 4)


# ---- the contrastive loss and its metrics ----

def info_nce_reference(img, txt, log_scale, groups=None):
    """Float64 numpy: normalise, scale by min(e^s, 100), mean of both cross-entropies; the target of
    row i spread evenly over the rows of its group (its own row alone when ``groups`` is None)."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    logits = min(np.exp(log_scale), 100.0) * img @ txt.T
    groups = np.arange(len(img)) if groups is None else np.asarray(groups)
    same = (groups[:, None] == groups[None]).astype(np.float64)
    target = same / same.sum(1, keepdims=True)
    ce = lambda z: np.mean(np.log(np.exp(z).sum(1)) - (target * z).sum(1))
    return (ce(logits) + ce(logits.T)) / 2


def test_info_nce_matches_float64_reference_and_is_symmetric(x64):
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    for log_scale in (0.5, 2.0, 5.5):
        loss, logits = contrastive.info_nce(jnp.asarray(img), jnp.asarray(txt), log_scale)
        assert logits.dtype == jnp.float64
        np.testing.assert_allclose(float(loss), info_nce_reference(img, txt, log_scale), rtol=1e-12)
        swapped, _ = contrastive.info_nce(jnp.asarray(txt), jnp.asarray(img), log_scale)
        np.testing.assert_allclose(float(swapped), float(loss), rtol=1e-12)
    # Rows 0, 2, 5 and rows 1, 4 carry identical captions: each is a positive of the others.
    groups = np.array([0, 1, 0, 2, 1, 0])
    tokens = jnp.asarray(np.stack([[g, 7, 1] for g in groups]))
    positives = contrastive.same_caption(tokens)
    np.testing.assert_array_equal(positives, groups[:, None] == groups[None])
    loss, _ = contrastive.info_nce(jnp.asarray(img), jnp.asarray(txt), 2.0, positives)
    np.testing.assert_allclose(float(loss), info_nce_reference(img, txt, 2.0, groups), rtol=1e-12)
    assert abs(float(loss) - info_nce_reference(img, txt, 2.0)) > 1e-3    # not the one-hot loss


def test_temperature_is_clipped_to_at_most_100_and_at_least_1():
    np.testing.assert_allclose(contrastive.logit_scale(jnp.asarray([-1.0, 0.0, 2.0, 4.6, 9.0])),
                               [1.0, 1.0, np.exp(2.0), np.exp(4.6), 100.0], rtol=1e-6)
    np.testing.assert_allclose(contrastive.logit_scale(contrastive.INIT_LOG_SCALE), 1 / 0.07, rtol=1e-6)
    img, txt = jax.random.normal(jax.random.key(0), (2, 4, 3))
    grad = jax.grad(lambda s: contrastive.info_nce(img, txt, s)[0])
    assert float(grad(9.0)) == 0.0 and float(grad(2.0)) != 0.0


def test_zero_shot_accuracy_and_recall_on_a_hand_made_similarity():
    sim = jnp.asarray([[0.9, 0.1, 0.0],
                       [0.8, 0.7, 0.1],
                       [0.2, 0.3, 0.1]])
    assert float(contrastive.zero_shot_accuracy(sim, [0, 1, 1])) == pytest.approx(2 / 3)
    # query 0 finds item 0 first; query 1's item is second; query 2's item is last
    assert float(contrastive.recall_at_k(sim, 1)) == pytest.approx(1 / 3)
    assert float(contrastive.recall_at_k(sim, 2)) == pytest.approx(2 / 3)
    assert float(contrastive.recall_at_k(sim, 3)) == 1.0
    # items 0 and 1 share a caption: query 1's top item (0) now counts
    assert float(contrastive.recall_at_k(sim, 1, groups=[0, 0, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="1 <= k <= 3"):
        contrastive.recall_at_k(sim, 5)


# ---- models ----

TINY = dict(vocab_size=12, max_length=5, embed_dim=16, image_features=(8, 16), text_width=16, text_layers=1,
            text_heads=2)


@pytest.mark.system
def test_a_tiny_clip_learns_a_fixed_batch(heldout):
    """Eight digits of eight classes, each captioned by its own word: InfoNCE falls from its start
    (random embeddings at CLIP's 1/τ = 14.3) through chance, ln 8, to under half of it."""
    model = CLIP(**TINY)
    images = datasets.to_model_range(heldout.images[[int(np.argmax(heldout.labels == k)) for k in range(8)]])
    tokens = np.full((8, 1, 5), PAD_ID, np.int32)
    tokens[:, 0, 0], tokens[:, 0, 1] = np.arange(8) + 3, END_ID
    params = model.init(jax.random.key(0), images, tokens[:, 0])["params"]
    tx = optax.adam(3e-3)
    state = training.create_train_state(jax.random.key(2), params, tx, 1)
    step = jax.jit(partial(contrastive.contrastive_step, apply_fn=model.apply, tx=tx))
    losses = []
    for _ in range(50):
        state, metrics = step(state, {"image": images, "label": tokens})
        losses.append(float(metrics["loss"]))
    assert losses[0] > np.log(8) and losses[-1] < 0.5 * np.log(8), losses[::5]


def test_the_noise_aware_tower_reads_t():
    tower = ImageTower((8, 16), 16, noise_aware=True)
    x = jnp.ones((2, 28, 28, 1))
    params = tower.init(jax.random.key(0), x, jnp.zeros((2,), jnp.int32))
    a = tower.apply(params, x, jnp.asarray([0, 0]))
    b = tower.apply(params, x, jnp.asarray([0, 500]))
    np.testing.assert_allclose(a[0], b[0])
    assert not np.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="pass timesteps"):
        tower.apply(params, x)
    with pytest.raises(ValueError, match="not noise-aware"):
        ImageTower((8, 16), 16).init(jax.random.key(0), x, jnp.zeros((2,), jnp.int32))


@pytest.mark.system
def test_the_text_encoder_pools_at_the_end_token_and_drives_the_unet():
    tau = TextTokens(vocab_size=12, max_length=5, dim=16, num_layers=1, num_heads=2)
    tokens = jnp.asarray([[3, 4, END_ID, PAD_ID, PAD_ID], [5, END_ID, PAD_ID, PAD_ID, PAD_ID]])
    params = tau.init(jax.random.key(0), tokens)
    context = tau.apply(params, tokens)
    assert context.shape == (2, 5, 16)
    np.testing.assert_allclose(end_pooled(context, tokens), context[jnp.arange(2), jnp.asarray([2, 1])])
    # causal: what follows the end token never reaches it
    other = tokens.at[:, 3:].set(7)
    np.testing.assert_allclose(end_pooled(tau.apply(params, other), other), end_pooled(context, tokens), atol=1e-6)
    with pytest.raises(ValueError, match="L <= 5"):
        tau.apply(params, jnp.zeros((2, 6), jnp.int32))

    unet = UNet(out_channels=1, image_size=28, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(14,), norm_groups=4, dropout=0.0, context_dim=16, context_encoder=tau)
    x, t = jnp.zeros((2, 28, 28, 1)), jnp.asarray([10, 10])
    variables = unet.init(jax.random.key(1), x, t, tokens=tokens)
    same = unet.apply(variables, x, t, tokens=tokens[::-1])
    out = unet.apply(variables, x, t, tokens=tokens)
    assert out.shape == (2, 28, 28, 1) and not np.allclose(out[0], same[0])
    with pytest.raises(ValueError, match="pass labels \\(ClassTokens\\) or tokens"):
        unet.apply(variables, x, t)


# ---- experiments.train_clip ----

@pytest.mark.parametrize("noise_aware", [False, True])
@pytest.mark.system
def test_train_clip_records_zero_shot_and_recall_and_loads_back(tmp_path, noise_aware):
    from experiments.text import clip_training
    c = tiny_clip_config(noise_aware)
    state, report = clip_training.train_clip(c, tmp_path)
    assert int(state.step) == 2 and (tmp_path / "tokenizer.json").exists()
    evaluations = report["evaluations"]
    assert [e["timestep"] for e in evaluations] == ([0, 250, 500] if noise_aware else [None])
    for e in evaluations:
        for key in ("zero_shot_accuracy", "image_to_text_recall@1", "text_to_image_recall@5"):
            assert 0.0 <= e[key] <= 1.0
        assert e["image_to_text_recall@1"] <= e["image_to_text_recall@5"]
    model, params, tokenizer, config = clip_training.load_clip(tmp_path)
    assert model.noise_aware == noise_aware and tokenizer.decode(tokenizer.encode(["the digit 7"])) == ["the digit 7"]
    same = jax.tree.map(lambda a, b: np.array_equal(a, b), params, state.ema_params)
    assert all(jax.tree.leaves(same))


@pytest.mark.parametrize("field,value,message", [
    ("clip.domain", "cifar", "clip.domain='cifar' is not one of"),
    ("optim.grad_accum_steps", 2, "InfoNCE contrasts each image"),
    ("clip.text_heads", 3, "does not split into clip.text_heads=3"),
])
def test_bad_clip_configs_fail_before_any_work(tmp_path, field, value, message):
    from experiments.text import clip_training
    c = set_fields(tiny_clip_config(False), {field: value})
    with pytest.raises(ValueError, match=message):
        clip_training.train_clip(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()
