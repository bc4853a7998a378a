"""Latent diffusion (Rombach et al. 2022) end to end on a tiny autoencoder: the scale factor, a
class-conditional latent run through cross-attention trained, sampled (decoded) and evaluated, the
same samples on 1 and 8 devices, conditioning by class tokens and by concatenation, guidance with
the null context, and the refusals."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import base
from diffusion import guidance, parallel, samplers, schedules
from diffusion.data import datasets
from diffusion.latent import networks
from diffusion.models.conditioning import ClassTokens
from diffusion.models.unet import UNet
from experiments import build, inference, loop, results, scoring
from experiments.latent import autoencoder_loop, autoencoder_runs
from tiny_configs import shrink


def tiny_autoencoder(data):
    """Two steps of an f = 4 KL autoencoder with 8 channels on ``data`` (28 padded to 32): z ∈ R^{8×8×3}."""
    c = base.get_config()
    c.data.source = data
    f = c.first_stage
    f.base_channels, f.channel_mult, f.norm_groups, f.pad, f.mid_attention = 8, (1, 1, 1), 4, 2, False
    c.first_stage_train.eval_examples, c.first_stage_train.grid_images = 16, 8
    c.train.batch_size, c.train.num_steps, c.train.checkpoint_every, c.train.sample_every = 16, 2, 2, 2
    c.optim.warmup_steps = 2
    return c


def tiny_latent(root, steps=2):
    """A class-conditional tiny U-Net on the latents of ``root``'s autoencoder: each label → 2 tokens
    τθ(y) for cross-attention."""
    c = shrink(base.get_config(), steps=steps)
    c.data.source, c.data.autoencoder = str(root / "data.npz"), str(root / "ae")
    c.model.attention_resolutions = (4,)
    c.model.num_classes, c.data.class_dropout = 10, 0.2
    c.model.context_encoder, c.model.context_tokens, c.model.context_dim = "class_tokens", 2, 8
    c.diffusion.decoder, c.sample.clip, c.diffusion.num_steps = "gaussian", "none", 100
    return c


@pytest.fixture(scope="module")
def ldm(tmp_path_factory):
    """An autoencoder run and a latent run on it, on 320 MNIST images (encoded in a moment)."""
    root = tmp_path_factory.mktemp("ldm")
    split, _ = datasets.load_splits("mnist", image_size=28, holdout_fraction=0.1)
    np.savez(root / "data.npz", image=split.images[:320], label=split.labels[:320])
    autoencoder_loop.train_autoencoder(tiny_autoencoder(str(root / "data.npz")), root / "ae")
    loop.train_and_evaluate(tiny_latent(root), root / "ldm")
    return root


@pytest.mark.system
def test_the_scale_factor_makes_the_training_latents_unit_variance(ldm, monkeypatch):
    """s = 1/std(ℰ(x)) over the training split, checked in numpy; it is stored in config.json, and a
    resumed run reuses it rather than measuring again."""
    run = inference.load_run(ldm / "ldm")
    config = run.config
    train_split, _ = build.load_data(config)
    z = parallel.encode_split(run.latent.autoencoder.encode, train_split, parallel.make_mesh()).images
    assert z.shape == (len(train_split), 8, 8, 3)
    scale = json.loads((ldm / "ldm" / "config.json").read_text())["data"]["latent_scale"]
    assert scale == config.data.latent_scale == run.latent.scale
    np.testing.assert_allclose(scale, 1 / np.std(z.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(np.std(scale * z.astype(np.float64)), 1.0, rtol=1e-6)
    assert abs(np.std(z) - 1) > 0.05     # the raw latents were not unit-variance: the scale did something

    def measure_again(_):
        raise AssertionError("a resumed run measured the scale again")
    monkeypatch.setattr(networks, "scale_factor", measure_again)
    resumed, space, latents = autoencoder_runs.latent_training_data(tiny_latent(ldm), ldm / "ldm", train_split,
                                                                       parallel.make_mesh())
    assert resumed.data.latent_scale == space.scale == scale
    np.testing.assert_allclose(latents.images, scale * z, rtol=1e-6)


@pytest.mark.system
def test_a_latent_run_trains_samples_and_evaluates_decoded_images(ldm):
    """The training grid, the drawn samples (classifier-free guided through the null tokens) and the
    evaluated samples are decoded 28×28 images; FID on them, NLL in the latent space."""
    run = inference.load_run(ldm / "ldm")
    assert build.data_shape(run.config) == (8, 8, 3) and run.model.image_size == 8
    assert "context_encoder" in run.params and "class_embedding" not in run.params
    grid = np.asarray(Image.open(ldm / "ldm" / "samples" / "step_0000002.png"))
    assert grid.shape[:2] == (2 * (3 * 30 + 2),) * 2    # 8 decoded 28×28 samples (not 8×8 latents) in 3 × 3 cells
    mesh = parallel.make_mesh()
    draw = inference.build_draw_fn(run, mesh, sampler="ddim", steps=2, guide="classifier_free", keep_every=1)
    images, frames = draw(run.params, jax.random.key(0), jnp.arange(8, dtype=jnp.int32), np.float32(2.0))
    assert images.shape == (8, 28, 28, 1) and frames["x0"].shape[1:] == frames["x_t"].shape[1:] == (8, 28, 28, 1)
    assert np.all(np.isfinite(np.asarray(images)))
    rows, nlls = results.evaluate_run(ldm / "ldm", [("ddim", 2, 0.0)], results.Draws(num=16, batch=8),
                                      results.Measures(nll_examples=8))
    assert rows[1]["num"] == 16 and np.isfinite(rows[1]["fid"])
    with np.load(ldm / "ldm" / "eval" / f"samples_ddim2_eta0_seed0_step{run.step}.npz") as f:
        assert f["image"].shape == (16, 28, 28, 1) and f["image"].dtype == np.uint8
    assert nlls["vlb"]["num"] == 8 and np.isfinite(nlls["vlb"]["bits_per_dim"])


@pytest.mark.system
def test_latent_samples_are_the_same_on_one_and_eight_devices(ldm):
    run = inference.load_run(ldm / "ldm")
    out = []
    for devices in (jax.devices()[:1], jax.devices()[:8]):
        mesh = parallel.make_mesh(devices)
        placed = dataclasses.replace(run, params=jax.device_put(run.params, parallel.replicated(mesh)))
        draw = inference.build_draw_fn(placed, mesh, sampler="ddim", steps=2)
        out.append(inference.draw_samples(placed, draw, mesh, num=8, batch=8, seed=3))
    assert out[0].shape == (8, 28, 28, 1)
    np.testing.assert_allclose(out[0].astype(int), out[1].astype(int), atol=1)   # uint8: float noise may round ±1


@pytest.mark.system
def test_a_studys_first_stage_floor_is_the_fid_of_its_reconstructions_in_the_cells_terms(ldm):
    """``measure.first_stage_floors``: for the autoencoder a latent model names, every metric of its
    reconstructions 𝒟(ℰ(x)) of the first ``num`` held-out images against the cells' reference, with
    their features; the held-out images' own FID at that count for every row.
    And ``measure.trained`` takes a finished latent run (its measured scale stored) as trained."""
    from types import SimpleNamespace

    from diffusion import metrics
    from experiments.studies import measure
    mesh = parallel.make_mesh()
    train_split, heldout = build.load_data(tiny_latent(ldm))
    feature_fn = lambda images: (images.reshape(len(images), -1)[:, ::49].astype(np.float64) / 255,
                                 np.full((len(images), 2), 0.5))     # 16 pixels as features
    reference = metrics.FeatureStats(16).update(feature_fn(train_split.images)[0])
    study = SimpleNamespace(num=10, autoencoders={"ae": SimpleNamespace(workdir=ldm / "ae")})
    floors = measure.first_stage_floors(study, mesh, heldout, feature_fn, reference)
    assert set(floors) == {"", str(ldm / "ae")}
    images = heldout.images[:10]
    autoencoder = autoencoder_runs.load_autoencoder(ldm / "ae")
    recs = datasets.to_uint8(np.asarray(autoencoder.decode(autoencoder.encode(datasets.to_model_range(images)))))
    own, rec = (scoring.quality(*feature_fn(x), reference) for x in (images, recs))
    assert floors[""] == dict(heldout_fid=own["fid"], heldout_fid_se=own["fid_se"], floor_images=10)
    fewer = measure.first_stage_floors(SimpleNamespace(num=10 ** 6, autoencoders={}), mesh, heldout, feature_fn,
                                       reference)
    assert fewer[""]["floor_images"] == len(heldout.images) < 10 ** 6     # the split, when smaller than the cells
    assert floors[str(ldm / "ae")] == dict(floors[""], ae_fid=pytest.approx(rec["fid"], rel=1e-4),
                                           ae_fid_se=pytest.approx(rec["fid_se"], rel=1e-3))
    assert rec["fid"] != own["fid"]
    # a rerun of a finished latent study finds the run trained: the scale it measured is its own
    assert measure.trained(tiny_latent(ldm), ldm / "ldm")
    assert not measure.trained(tiny_latent(ldm, steps=3), ldm / "ldm")


@pytest.fixture(scope="module")
def conditioned_unet():
    """A tiny U-Net on 8×8×3 inputs with both conditionings: cross-attention to τθ(y), two class
    tokens per label, and a 1-channel image concatenated to x_t; its jitted apply and parameters."""
    tau = ClassTokens(num_classes=10, num_tokens=2, dim=8)
    model = UNet(out_channels=3, image_size=8, base_channels=8, channel_mult=(1, 2), attention_resolutions=(4,),
                 norm_groups=4, dropout=0.0, context_dim=8, context_encoder=tau)
    x, t = jax.random.normal(jax.random.key(0), (4, 8, 8, 3)), jnp.array([10, 500, 900, 999])
    cond_image = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    params = jax.jit(model.init)(jax.random.key(1), x, t, labels=jnp.zeros((4,), jnp.int32), cond_image=cond_image)["params"]
    apply = jax.jit(lambda p, x, ts, **c: model.apply({"params": p}, x, ts, **c))
    return apply, params, x, t, cond_image


@pytest.mark.system
def test_class_tokens_reach_the_output_through_cross_attention(conditioned_unet):
    """τθ(y) is the cross-attention context: another label (or the null label) changes ε̂, and the
    U-Net has no additive class embedding."""
    apply, params, x, t, cond_image = conditioned_unet
    assert params["context_encoder"]["embedding"]["embedding"].shape == (11, 16)
    assert "class_embedding" not in params and "mid_block_cross_attentions_0" in params
    out = lambda y: np.asarray(apply(params, x, t, labels=jnp.full((4,), y, jnp.int32), cond_image=cond_image))
    assert not np.allclose(out(3), out(4), atol=1e-4)
    assert not np.allclose(out(3), out(10), atol=1e-4)


@pytest.mark.system
def test_a_concatenated_image_condition_changes_the_output(conditioned_unet):
    """``cond_image`` is concatenated to x_t: conv_in reads C + C' channels and another condition
    changes ε̂."""
    apply, params, x, t, cond_image = conditioned_unet
    assert params["conv_in"]["kernel"].shape == (3, 3, 4, 8)
    labels = jnp.zeros((4,), jnp.int32)
    a = np.asarray(apply(params, x, t, labels=labels, cond_image=cond_image))
    b = np.asarray(apply(params, x, t, labels=labels, cond_image=-cond_image))
    assert a.shape == (4, 8, 8, 3) and not np.allclose(a, b, atol=1e-4)


@pytest.mark.system
def test_classifier_free_guidance_with_the_null_context_samples(conditioned_unet):
    """ε̃ = (1 + w)·ε(x, τθ(y)) − w·ε(x, τθ(∅)) inside a compiled DDIM loop, with the concatenated
    condition given to both passes: finite, and w moves the samples."""
    apply, params, x_T, _, cond_image = conditioned_unet
    schedule = schedules.make_schedule("linear", 1000)

    @jax.jit
    def draw(params, w):
        guided = guidance.classifier_free(lambda x, ts, **c: apply(params, x, ts, **c), null_label=10)
        return samplers.sample(samplers.ddim_step, guided, schedule, x_T, jax.random.key(2),
                               timesteps=samplers.spaced(schedule, 3),
                               cond={"labels": jnp.arange(4, dtype=jnp.int32), "guidance_scale": w,
                                     "cond_image": cond_image})
    plain, strong = np.asarray(draw(params, 0.0)), np.asarray(draw(params, 3.0))
    assert plain.shape == (4, 8, 8, 3) and np.all(np.isfinite(strong)) and not np.allclose(plain, strong, atol=1e-4)


def _unlabelled_npz(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp_path / "unlabelled.npz", image=images)
    return str(tmp_path / "unlabelled.npz")


@pytest.mark.parametrize("case, message", [
    ("missing_autoencoder", r"data.autoencoder='.*missing' is not an autoencoder run \(no .*config.json\): train one"),
    ("latent_too_small", r"the 8×8×3 latents of data.autoencoder=.* cannot be halved 4 times by model.channel_mult="
                         r"\(1, 2, 2, 2, 2\): give it at most 4 levels"),
    ("unlabelled_data", r"has no labels, but this run uses them .* set --config.model.num_classes=0"),
    ("discretized_decoder", r"diffusion.decoder='discretized' reads 8-bit pixels; latents are continuous"),
    ("clip", r"sample.clip='static' clips x̂_0 to the pixels' \[−1, 1\]"),
])
@pytest.mark.system
def test_a_latent_run_that_cannot_work_is_refused_before_any_work(ldm, tmp_path, monkeypatch, case, message):
    c = tiny_latent(ldm)
    if case == "missing_autoencoder":
        c.data.autoencoder = str(tmp_path / "missing")
    elif case == "latent_too_small":
        c.model.channel_mult = (1, 2, 2, 2, 2)
    elif case == "unlabelled_data":
        c.data.source = _unlabelled_npz(tmp_path)
        monkeypatch.setattr(autoencoder_runs, "latent_training_data", None)   # refused before any encoding
    elif case == "discretized_decoder":
        c.diffusion.decoder = "discretized"
    else:
        c.sample.clip = "static"
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("name", ["fashion_mnist_kl_f4", "fashion_mnist_kl_f2",
                                  "fashion_mnist_vq_f4", "fashion_mnist_kl_f4_classes"])
@pytest.mark.system
def test_shipped_latent_configs_are_valid(ldm, name):
    """Each names its autoencoder's run and is valid once one exists there (the tiny one stands in:
    its 8×8 latents fit each U-Net)."""
    import importlib
    c = importlib.import_module(f"configs.latent.{name}").get_config()
    assert c.data.autoencoder == "runs/ae_" + "_".join(name.split("_")[2:4])
    c.data.autoencoder = str(ldm / "ae")
    build.validate(c)
