"""The latent-diffusion autoencoders (first stage): the KL's closed form, VQ's straight-through
gradient and codebook updates, shapes for every f, a tiny training run end to end, the refusals."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import base
from diffusion import metrics
from diffusion.checkpoints import Checkpointer
from diffusion.data import datasets
from diffusion.latent import autoencoder_losses, networks
from experiments import loop
from experiments.latent import autoencoder_loop, autoencoder_runs, hooks
from tiny_configs import poison_batches_at, set_fields

MULTS = {1: (1,), 2: (1, 2), 4: (1, 2, 2), 8: (1, 2, 2, 2)}


def tiny(kind="kl", steps=4, **first_stage_fields):
    """A few steps of an f = 4 autoencoder with 8 channels on the embedded MNIST (28 padded to 32)."""
    c = base.get_config()
    f = c.first_stage
    f.kind, f.base_channels, f.channel_mult, f.norm_groups, f.pad = kind, 8, (1, 1, 1), 4, 2
    f.codebook_size, f.disc_channels = 16, 8
    for name, value in first_stage_fields.items():
        f[name] = value
    c.first_stage_train.eval_examples, c.first_stage_train.grid_images = 16, 8
    c.train.batch_size, c.train.num_steps = 16, steps
    c.train.log_every, c.train.checkpoint_every, c.train.sample_every = 1, 2, 2
    c.optim.warmup_steps = 2
    return c


# --- the losses' mathematics ---

def test_kl_closed_form_equals_monte_carlo(x64):
    """½ Σ (μ² + σ² − 1 − log σ²) against E_q[log q(z) − log N(z; 0, I)] from 400k draws (float64),
    within 5 Monte Carlo standard errors."""
    key = jax.random.key(0)
    mean = jax.random.normal(key, (3, 2, 2, 2), jnp.float64)
    logvar = jax.random.uniform(jax.random.fold_in(key, 1), (3, 2, 2, 2), jnp.float64, -2.0, 1.5)
    closed = np.asarray(autoencoder_losses.gaussian_kl(mean, logvar))
    eps = jax.random.normal(jax.random.fold_in(key, 2), (400_000,) + mean.shape, jnp.float64)
    z = mean + jnp.exp(0.5 * logvar) * eps
    log_q = -0.5 * (eps ** 2 + logvar + jnp.log(2 * jnp.pi))
    log_p = -0.5 * (z ** 2 + jnp.log(2 * jnp.pi))
    draws = np.asarray((log_q - log_p).reshape(400_000, 3, -1).sum(-1))
    estimate, stderr = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
    assert closed.dtype == np.float64 and np.all(closed > 0)
    np.testing.assert_array_less(np.abs(closed - estimate), 5 * stderr)
    assert float(autoencoder_losses.gaussian_kl(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0]) == 0.0   # q = p


def test_vq_straight_through_gradient_is_the_identity_on_the_encoder_side():
    """Forward: the nearest code; backward: ∂L/∂z_e = ∂L/∂z at z = z_q, for a nonlinear L."""
    quantizer = networks.VectorQuantizer(codebook_size=8, dim=3)
    z_e = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    variables = quantizer.init(jax.random.key(1), z_e)
    codebook = variables["params"]["codebook"]
    w = jax.random.normal(jax.random.key(2), z_e.shape)
    loss = lambda z: jnp.sum(jnp.sin(3 * z) * w)
    z_st, aux = quantizer.apply(variables, z_e)
    d = jnp.sum((z_e[..., None, :] - codebook) ** 2, -1)
    np.testing.assert_array_equal(np.asarray(aux["indices"]), np.asarray(jnp.argmin(d, -1)))
    np.testing.assert_allclose(np.asarray(z_st), np.asarray(codebook[aux["indices"]]), atol=1e-6)
    through = jax.grad(lambda z: loss(quantizer.apply(variables, z)[0]))(z_e)
    at_code = jax.grad(loss)(aux["z_q"])
    np.testing.assert_allclose(np.asarray(through), np.asarray(at_code), rtol=1e-6)
    assert not np.allclose(np.asarray(through), np.asarray(jax.grad(loss)(z_e)), atol=1e-3)   # it is z_q's gradient


def test_codebook_loss_moves_codes_toward_their_assignments():
    """A gradient step on ‖sg[z_e] − z_q‖² moves each used code toward the mean of the encodings
    assigned to it and leaves the others; the commitment term moves only the encoder."""
    quantizer = networks.VectorQuantizer(codebook_size=16, dim=2)
    z_e = 0.1 * jax.random.normal(jax.random.key(0), (4, 4, 4, 2))
    codebook = quantizer.init(jax.random.key(1), z_e)["params"]["codebook"]
    codebook_loss = lambda cb, z: autoencoder_losses.vq_losses(*[quantizer.apply({"params": {"codebook": cb}}, z)[1][k]
                                                  for k in ("z_e", "z_q")])
    indices = np.asarray(networks.nearest_code(z_e, codebook)).reshape(-1)
    grad_cb = jax.grad(lambda cb: codebook_loss(cb, z_e)[0])(codebook)
    moved = codebook - 0.5 * grad_cb
    used = np.unique(indices)
    assert 0 < len(used) < 16
    flat = np.asarray(z_e).reshape(-1, 2)
    for k in used:
        centre = flat[indices == k].mean(0)
        assert np.linalg.norm(moved[k] - centre) < np.linalg.norm(codebook[k] - centre)
    unused = np.setdiff1d(np.arange(16), used)
    np.testing.assert_array_equal(np.asarray(moved[unused]), np.asarray(codebook[unused]))
    commit_cb, commit_z = jax.grad(lambda cb, z: codebook_loss(cb, z)[1], argnums=(0, 1))(codebook, z_e)
    assert not np.any(np.asarray(commit_cb)) and np.any(np.asarray(commit_z))


def test_ema_codebook_update_moves_codes_to_their_centroids():
    """The EMA update moves every used code toward the mean of its assigned encodings, and repeated
    with fixed assignments it converges to those means (the k-means fixed point)."""
    quantizer = networks.VectorQuantizer(codebook_size=8, dim=2, ema=True)
    z_e = jax.random.normal(jax.random.key(0), (2, 4, 4, 2))
    stats = quantizer.init(jax.random.key(1), z_e)["vq_ema"]
    assert set(stats) == {"codebook", "cluster_size", "embed_sum"}
    z_st, aux = quantizer.apply({"vq_ema": stats}, z_e)
    indices, flat = np.asarray(aux["indices"]).reshape(-1), np.asarray(z_e).reshape(-1, 2)
    used = np.unique(indices)
    centres = {k: flat[indices == k].mean(0) for k in used}
    new = autoencoder_losses.ema_codebook_update(stats, z_e, aux["indices"], decay=0.9)
    for k in used:
        assert np.linalg.norm(new["codebook"][k] - centres[k]) < np.linalg.norm(stats["codebook"][k] - centres[k])
    for _ in range(60):
        new = autoencoder_losses.ema_codebook_update(new, z_e, aux["indices"], decay=0.8)
    for k in used:
        np.testing.assert_allclose(np.asarray(new["codebook"][k]), centres[k], atol=1e-3)


def test_dead_codes_restart_at_encoder_outputs():
    """Codes whose EMA count falls below the threshold move to encoder outputs of the batch (count 1);
    a used code does not, and without a threshold nothing restarts."""
    quantizer = networks.VectorQuantizer(codebook_size=8, dim=2, ema=True)
    z_e = jax.random.normal(jax.random.key(0), (2, 4, 4, 2))
    stats = quantizer.init(jax.random.key(1), z_e)["vq_ema"]
    indices = jnp.zeros((2, 4, 4), jnp.int32)               # every encoding on code 0
    flat = np.asarray(z_e).reshape(-1, 2)
    is_encoding = lambda row: bool(np.any(np.all(np.isclose(flat, row, atol=1e-7), axis=1)))
    new = autoencoder_losses.ema_codebook_update(stats, z_e, indices, decay=0.99, restart_below=1.0, key=jax.random.key(2))
    assert all(is_encoding(np.asarray(new["codebook"][k])) for k in range(1, 8))
    np.testing.assert_array_equal(np.asarray(new["cluster_size"][1:]), np.ones(7))
    assert not is_encoding(np.asarray(new["codebook"][0])) and float(new["cluster_size"][0]) > 1
    kept = autoencoder_losses.ema_codebook_update(stats, z_e, indices, decay=0.99)
    assert not any(is_encoding(np.asarray(kept["codebook"][k])) for k in range(8))


def test_codebook_usage_and_hinge_losses():
    perplexity, dead = autoencoder_losses.codebook_usage(jnp.array([0, 0, 1, 1, 2, 2, 3, 3]), 6)
    assert float(perplexity) == pytest.approx(4.0) and int(dead) == 2
    perplexity, dead = autoencoder_losses.codebook_usage(jnp.zeros((5,), jnp.int32), 4)
    assert float(perplexity) == pytest.approx(1.0) and int(dead) == 3
    # a discriminator that is right by a margin > 1 has no hinge loss; the generator's term is −E[D(x̃)]
    assert float(autoencoder_losses.hinge_d_loss(jnp.full((4,), 2.0), jnp.full((4,), -3.0))) == 0.0
    assert float(autoencoder_losses.hinge_d_loss(jnp.zeros((4,)), jnp.zeros((4,)))) == pytest.approx(1.0)
    assert float(autoencoder_losses.hinge_g_loss(jnp.array([1.0, 3.0]))) == pytest.approx(-2.0)
    assert float(autoencoder_losses.adaptive_weight(jnp.full((4,), 3.0), jnp.full((4,), 1.0), delta=0.0)) == pytest.approx(3.0)
    assert [float(autoencoder_losses.adversarial_factor(s, 3)) for s in (0, 2, 3, 9)] == [0.0, 0.0, 1.0, 1.0]


def test_reconstruction_terms_follow_ldm_and_taming():
    """KL-reg sums the pixel error over an image (β_KL = 1e-6 is set against that sum), VQ-reg takes
    its mean; a perceptual weight without a perceptual network is refused."""
    x, x_rec = jnp.zeros((2, 4, 4, 1)), jnp.full((2, 4, 4, 1), 0.5)
    assert float(autoencoder_losses.reconstruction_term(x, x_rec, autoencoder_losses.FirstStageLoss("kl", "l1"))) == pytest.approx(8.0)
    assert float(autoencoder_losses.reconstruction_term(x, x_rec, autoencoder_losses.FirstStageLoss("vq", "l2"))) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="perceptual_fn"):
        autoencoder_losses.reconstruction_term(x, x_rec, autoencoder_losses.FirstStageLoss("kl", perceptual_weight=1.0))
    plugged = autoencoder_losses.reconstruction_term(x, x_rec, autoencoder_losses.FirstStageLoss("kl", perceptual_weight=2.0),
                                      perceptual_fn=lambda a, b: jnp.ones((a.shape[0],)))
    assert float(plugged) == pytest.approx(8.0 + 2.0 * 16)


# --- the networks ---

@pytest.mark.parametrize("kind", ["kl", "vq"])
@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_encoder_and_decoder_shapes_for_every_factor(kind, factor):
    """z is [B, 32/f, 32/f, c] for 28×28 images padded to 32, and 𝒟(ℰ(x)) is the image's shape
    (traced with eval_shape: nothing is compiled)."""
    c = tiny(kind, factor=factor, channel_mult=MULTS[factor], latent_channels=5)
    autoencoder_runs.validate(c)
    model = autoencoder_runs.make_autoencoder(c)
    variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1))), jax.random.key(0))
    x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
    z = jax.eval_shape(lambda v, x: model.apply(v, x, method="encode"), variables, x)
    assert z.shape == (3,) + hooks.latent_shape(c) == (3, 32 // factor, 32 // factor, 5)
    decoded = jax.eval_shape(lambda v, z: model.apply(v, z, method="decode"), variables, z)
    assert decoded.shape == (3, 28, 28, 1)
    encoder = networks.Encoder(out_channels=7, base_channels=8, channel_mult=MULTS[factor], norm_groups=4)
    out = jax.eval_shape(lambda k, x: encoder.init_with_output(k, x)[0], jax.random.key(0),
                         jax.ShapeDtypeStruct((3, 32, 32, 1), jnp.float32))
    assert out.shape == (3, 32 // factor, 32 // factor, 7)
    if kind == "kl":   # ℰ gives the mean and the log-variance: 2c channels
        assert variables["params"]["quant_conv"]["kernel"].shape == (1, 1, 10, 10)


# --- the entry point ---

def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.system
def test_kl_run_with_discriminator_end_to_end(tmp_path):
    """Four steps with the PatchGAN switched on at step 2: logs, checkpoints 2 and 4, grids, PSNR
    and rFID; the loaded EMA autoencoder reproduces the recorded PSNR."""
    c = tiny("kl", discriminator=True)
    c.first_stage_train.disc_start = 2
    state = autoencoder_loop.train_autoencoder(c, tmp_path)
    assert int(state.step) == 4 and set(state.params) == {"autoencoder", "discriminator"}
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["disc_factor"] for r in rows] == [0.0, 0.0, 1.0, 1.0]
    assert all(np.isfinite(r["loss"]) and r["kl"] > 0 and r["disc_adaptive_weight"] > 0 for r in rows)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    assert (tmp_path / "reconstructions" / "step_0000002.png").exists()
    grid = np.asarray(Image.open(tmp_path / "reconstructions" / "step_0000004.png"))
    assert grid.shape[:2] == (2 * (2 * 30 + 2), 2 * (8 * 30 + 2))    # one row of 8 originals over 8 reconstructions
    record = json.loads((tmp_path / "reconstruction.json").read_text())
    assert set(record) == {"2", "4"}
    last = record["4"]
    assert last["num"] == 16 and 0 < last["psnr"] < 100 and last["rfid"] > 0 and last["features"] == "classifier-mnist"
    ae = autoencoder_runs.load_autoencoder(tmp_path)
    assert ae.step == 4 and ae.latent_shape == (8, 8, 3)
    _, heldout = datasets.load_splits("mnist", image_size=28, holdout_fraction=0.1)
    x = datasets.to_model_range(heldout.images[:16])
    recs = datasets.to_uint8(jax.jit(lambda x: ae.decode(ae.encode(x)))(x))
    assert float(metrics.psnr(recs, heldout.images[:16]).mean()) == pytest.approx(last["psnr"], abs=1e-3)


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    """A 4-step VQ run with EMA codebook updates, straight and stopped after checkpoint 2 then resumed."""
    root = tmp_path_factory.mktemp("vq")
    straight = autoencoder_loop.train_autoencoder(tiny("vq", codebook_update="ema"), root / "a")
    autoencoder_loop.train_autoencoder(tiny("vq", steps=2, codebook_update="ema"), root / "b")
    resumed = autoencoder_loop.train_autoencoder(tiny("vq", codebook_update="ema"), root / "b")
    return root, straight, resumed


@pytest.mark.system
def test_vq_ema_run_resumes_bit_for_bit(vq_run):
    root, straight, resumed = vq_run
    assert int(resumed.step) == int(straight.step) == 4
    assert "quantize" not in straight.params["autoencoder"]    # EMA updates: the codebook is no parameter
    for a, b in zip(jax.tree.leaves((straight.params, straight.model_state)),
                    jax.tree.leaves((resumed.params, resumed.model_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    initial = autoencoder_runs.init_variables(tiny("vq", codebook_update="ema"), jax.random.key(0))[1]
    assert not np.array_equal(np.asarray(initial["vq_ema"]["quantize"]["codebook"]),
                              np.asarray(straight.model_state["vq_ema"]["quantize"]["codebook"]))   # the EMA moved it
    rows = _rows(root / "b" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(1 <= r["perplexity"] <= 16 for r in rows)
    assert [r["loss"] for r in rows] == [r["loss"] for r in _rows(root / "a" / "metrics.jsonl")]
    record = json.loads((root / "a" / "reconstruction.json").read_text())["4"]
    assert 1 <= record["perplexity"] <= 16 and 0 <= record["dead_codes"] < 16 and record["codebook_size"] == 16


@pytest.mark.system
def test_a_resume_with_another_autoencoder_is_refused(vq_run):
    root = vq_run[0]
    c = tiny("vq", steps=6, codebook_update="ema", latent_channels=4)
    with pytest.raises(ValueError, match="first_stage.latent_channels: checkpoint 3 vs config 4"):
        autoencoder_loop.train_autoencoder(c, root / "a")


@pytest.mark.system
def test_nan_guard_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    poison_batches_at(monkeypatch, 3)
    with pytest.raises(loop.NonFiniteStepError, match=r"at step 3.*last finite checkpoint \(step 2\)"):
        autoencoder_loop.train_autoencoder(tiny("vq", steps=6, codebook_update="ema"), tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 2


@pytest.mark.parametrize("fields, message", [
    ({"first_stage.factor": 8, "first_stage.channel_mult": (1, 1, 1, 1), "first_stage.pad": 0},
     r"factor=8 does not divide the image size 28 \+ 2·first_stage.pad=0 = 28: set --config.first_stage.pad=2"),
    ({"first_stage.factor": 3}, r"first_stage.factor=3 is not one of \[1, 2, 4, 8\]"),
    ({"first_stage.factor": 2}, r"channel_mult=\(1, 1, 1\) has 3 levels but first_stage.factor=2 needs"),
    ({"first_stage.kind": "vq", "first_stage.codebook_size": 1}, "codebook_size=1 must be an integer >= 2"),
    ({"first_stage.kind": "vae"}, "first_stage.kind='vae' is not one of"),
    ({"first_stage.codebook_update": "kmeans"}, "codebook_update='kmeans' is not one of"),
    ({"first_stage_train.reconstruction": "lpips"}, "reconstruction='lpips' is not one of"),
    ({"first_stage_train.kl_weight": -1e-6}, "kl_weight=-1e-06 must be a finite number >= 0"),
    ({"first_stage.discriminator": True, "first_stage_train.disc_weight": 0.0}, "disc_weight=0.0 must be"),
    ({"first_stage.base_channels": 6}, "not divisible into first_stage.norm_groups=4"),
    ({"data.source": "toy:swissroll"}, "2-D toy data"),
    ({"train.batch_size": 12}, "does not divide over the 8 devices"),
])
def test_impossible_settings_are_refused_before_any_work(tmp_path, fields, message):
    c = set_fields(tiny(), fields)
    with pytest.raises(ValueError, match=message):
        autoencoder_loop.train_autoencoder(c, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("name", ["autoencoder_kl_f2", "autoencoder_kl_f4", "autoencoder_kl_f8", "autoencoder_vq_f4",
                                  "autoencoder_ldm_kl_f2", "autoencoder_ldm_kl_f4", "autoencoder_ldm_vq_f4"])
def test_shipped_autoencoder_configs_are_valid(name):
    import importlib
    c = importlib.import_module(f"configs.latent.{name}").get_config()
    autoencoder_runs.validate(c)
    kind, f = name.split("_")[-2], int(name[-1])
    assert c.first_stage.kind == kind and c.first_stage.factor == f
    assert hooks.latent_shape(c)[:2] == (32 // f, 32 // f)
