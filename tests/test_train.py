"""The training entry point on tiny configs: resume, sharding, the NaN guard, config checks, every shipped config."""
import importlib
import json
import shutil
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base, swissroll
from diffusion import parallel, training
from diffusion.checkpoints import Checkpointer
from diffusion.data import datasets, pipeline
from experiments import build, loop
from tiny_configs import assert_same_params, param_leaves, poison_batches_at, set_fields, shrink, step_batch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def tiny():
    return shrink(base.get_config())


@pytest.mark.system
def test_resume_is_bitwise_identical(tmp_path, tiny_run):
    straight_dir, straight = tiny_run                # tiny() trained straight to step 4
    first = tiny()
    first.train.num_steps = 2                   # the run is stopped right after its first checkpoint
    loop.train_and_evaluate(first, tmp_path / "b")
    resumed = loop.train_and_evaluate(tiny(), tmp_path / "b")
    assert int(resumed.step) == int(straight.step) == 4
    assert_same_params(straight, resumed)
    lines = [json.loads(l) for l in (straight_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3, 4] and all(np.isfinite(l["loss"]) for l in lines)
    # Killed after logging steps 3 and 4 but before checkpoint 4 was written: the resumed run
    # replays them, and the log keeps one row per step, equal to the uninterrupted run's.
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')                  # and killed halfway through writing a row
    loop.train_and_evaluate(tiny(), tmp_path / "b")
    replayed = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in replayed] == [1, 2, 3, 4]
    assert [l["loss"] for l in replayed] == [l["loss"] for l in lines]
    assert list((straight_dir / "tensorboard").iterdir())
    assert (straight_dir / "samples" / "step_0000004.png").exists()
    assert sorted(int(p.name) for p in (straight_dir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]


def test_a_fresh_state_is_the_eager_initialisation_bit_for_bit(tmp_path):
    """``restore_or_init`` compiles the initialisation at LLVM level 1 (``xla_flags.one_shot_jit``):
    every leaf, the key's data included, is what the initialisers give run eagerly."""
    config = swissroll.get_config()
    model, schedule, tx = build.make_model(config), build.make_schedule(config), build.make_optimizer(config)
    init_fn = partial(loop.init_state, config, model, schedule, tx)
    state, start, _ = loop.restore_or_init(config, tmp_path, init_fn, parallel.make_mesh())
    eager = init_fn(jax.random.key(config.seed))
    assert start == 0
    for ours, theirs in zip(jax.tree.leaves(state), jax.tree.leaves(eager), strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.system
def test_eight_devices_match_one(tmp_path):
    c = tiny()
    model, schedule = build.make_model(c), build.make_schedule(c)
    # SGD keeps the update linear in the gradient, so the only difference left is the
    # all-reduce order (Adam's m/√v would amplify float noise in near-zero gradients).
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
    key = jax.random.key(0)
    state = training.create_train_state(key, build.init_params(model, c, key), tx, schedule.num_steps)
    train_split, _ = datasets.load_splits("mnist", image_size=28, holdout_fraction=0.1)
    batch = pipeline.model_inputs(step_batch(train_split, 16, 0))
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:8]):
        assert len(devices) in (1, 8)
        mesh = parallel.make_mesh(devices)
        # Stratified t (every other training test draws it i.i.d.): the batch's strata are drawn
        # for the global batch, then sharded with its rows.
        step = jax.jit(partial(training.train_step, apply_fn=model.apply, tx=tx, schedule=schedule,
                               loss_kwargs=build.loss_kwargs(c), timestep_sampler="stratified"),
                       in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)))
        s = jax.device_put(state, parallel.replicated(mesh))
        for _ in range(2):
            s, metrics = step(s, parallel.global_batch(batch, mesh))
        results.append((float(metrics["loss"]), param_leaves(s)))
    assert len(jax.devices()) == 8
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("poisoned, log_every", [(3, 1), (2, 5)])
@pytest.mark.system
def test_nan_guard_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, poisoned, log_every):
    """Step 3 is read at once (it logs); step 2 of a run logging every 5 steps is read while step 3
    runs: either way the run stops naming the poisoned step and keeps checkpoint 2, and nothing later."""
    poison_batches_at(monkeypatch, poisoned)
    c = tiny()
    c.train.num_steps, c.train.log_every = 6, log_every
    with pytest.raises(loop.NonFiniteStepError,
                       match=f"loss \\(nan\\) at step {poisoned}.*last finite checkpoint \\(step 2\\)"):
        loop.train_and_evaluate(c, tmp_path)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 2
    model = build.make_model(c)
    template = training.create_train_state(jax.random.key(0), build.init_params(model, c, jax.random.key(0)),
                                           training.make_optimizer(lr=1e-3, grad_clip=1.0), 1000)
    state, meta = ckpt.restore(template, config=c.to_dict())
    assert meta["data_position"] == 2 and all(np.isfinite(a).all() for a in param_leaves(state))


@pytest.mark.system
def test_an_update_that_overflows_the_parameters_is_not_applied_or_saved(tmp_path, monkeypatch):
    """A finite loss and gradient whose update makes the parameters infinite (here an update scaled
    by ∞ at step 3) stops the run at that step; checkpoint 4 is never written with it."""
    real = build.make_optimizer
    overflow_at_3 = optax.scale_by_schedule(lambda count: jnp.where(count == 3, jnp.inf, 1.0))
    monkeypatch.setattr(build, "make_optimizer", lambda config: optax.chain(real(config), overflow_at_3))
    c = shrink(swissroll.get_config(), steps=6)     # the guard is the loop's, whatever the model: an MLP compiles in seconds
    with pytest.raises(loop.NonFiniteStepError,
                       match=r"parameters or EMA after the update at step 3.*last finite checkpoint \(step 2\)"):
        loop.train_and_evaluate(c, tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 2


def test_the_loop_schedule_fires_each_event_at_its_interval_and_all_at_the_last_step():
    """``run_loop``'s events, no JAX: step 4 of 10 logs (every 2) with its evaluation (every 4),
    5 saves, 6 logs and samples, 7 does nothing and is read while step 8 runs; the last step logs,
    saves and samples whatever the intervals; an evaluation is logged off the log interval; an
    interval of 0 (no sampler, no evaluator) never fires, not even at the last step."""
    every = dict(log_every=2, checkpoint_every=5, sample_every=3, eval_every=4)
    assert loop.events_after(4, 10, **every) == loop.Events(log=True, evaluate=True)
    assert loop.events_after(5, 10, **every) == loop.Events(save=True)
    assert loop.events_after(6, 10, **every) == loop.Events(log=True, sample=True)
    quiet = loop.events_after(7, 10, **every)
    assert quiet == loop.Events() and not quiet.reads_now
    assert loop.events_after(10, 10, **every) == loop.Events(log=True, save=True, sample=True)
    assert loop.events_after(4, 10, log_every=3, checkpoint_every=5, eval_every=4) == loop.Events(log=True,
                                                                                                  evaluate=True)
    assert loop.events_after(10, 10, log_every=3, checkpoint_every=4) == loop.Events(log=True, save=True)
    assert all(e.reads_now for e in (loop.Events(log=True), loop.Events(save=True), loop.Events(sample=True)))


def test_cooldown_is_warmup_then_constant_then_linear_to_zero():
    lr = training.learning_rate_schedule(lr=3e-3, warmup_steps=200, decay="cooldown", total_steps=7000,
                                         cooldown_steps=1400)
    step = np.arange(7001)
    closed_form = 3e-3 * np.minimum(step / 200, 1) * np.clip((7000 - step) / 1400, 0, 1)
    np.testing.assert_allclose(np.asarray(lr(step)), closed_form, rtol=1e-5, atol=1e-9)   # float32
    with pytest.raises(ValueError, match="cooldown_steps=6801 .* needs 1 to 6800 steps"):
        training.learning_rate_schedule(lr=3e-3, warmup_steps=200, decay="cooldown", total_steps=7000,
                                        cooldown_steps=6801)


@pytest.mark.parametrize("field, value, message", [
    ("diffusion.schedule", "cosin", "diffusion.schedule='cosin'"),
    ("diffusion.loss", "hybrid", "needs diffusion.variance"),
    ("model.kind", "mlp", "does not fit data.source"),
    ("train.batch_size", 12, "does not divide over the 8 devices"),
    ("data.image_size", 27, "image_size 27 cannot be halved"),
    ("data.source", "nowhere.npz", "no dataset file at nowhere.npz"),
    ("data.workers", -1, r"data.workers=-1 \(grain worker processes\) must be >= 0"),
])
def test_bad_configs_fail_before_any_work(tmp_path, field, value, message):
    c = set_fields(tiny(), {field: value})
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        loop.train_and_evaluate(c, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_config_field_is_named():
    c = base.get_config()
    c.lock()
    with pytest.raises(AttributeError, match="lrr"):
        c.optim.lrr = 1.0


@pytest.mark.parametrize("name", ["swissroll", "mnist",
                                  pytest.param("fashion_mnist", marks=pytest.mark.system),
                                  pytest.param("mnist_cfg", marks=pytest.mark.system),
                                  pytest.param("cifar10_ddpm", marks=pytest.mark.system),
                                  pytest.param("cifar10_iddpm", marks=pytest.mark.slow),     # ~80 s cold
                                  pytest.param("celeba64_ddim", marks=pytest.mark.slow)])
def test_every_shipped_config_runs_a_step(tmp_path, name):
    import tensorflow_datasets as tfds
    c = shrink(importlib.import_module(f"configs.{name}").get_config(), steps=1)
    if name == "fashion_mnist":
        if not SHARED.exists():
            pytest.skip("../shared/data is not beside this checkout")
        c.data.source = str(SHARED / "fashion_mnist_70k.npz")
    with tfds.testing.mock_data(num_examples=16):
        state = loop.train_and_evaluate(c, tmp_path)
    assert int(state.step) == 1
    assert (tmp_path / "samples" / "step_0000001.png").exists()


def test_a_tfds_set_without_test_split_needs_a_holdout_fraction(monkeypatch):
    def fake_split(name, split, data_dir):
        if split != "train":
            raise ValueError(f"Unknown split {split!r}")
        return np.arange(16 * 28 * 28, dtype=np.uint8).reshape(16, 28, 28, 1), np.arange(16, dtype=np.int32)
    monkeypatch.setattr(datasets, "_tfds_split", fake_split)
    with pytest.raises(ValueError, match="no test split.*holdout_fraction"):
        datasets.load_splits("tfds:trainonly", image_size=28, holdout_fraction=0.0)
    train, heldout = datasets.load_splits("tfds:trainonly", image_size=28, holdout_fraction=0.25)
    assert (len(train), len(heldout)) == (12, 4)
    assert sorted(np.concatenate([train.labels, heldout.labels])) == list(range(16))


def test_a_tfds_set_without_labels_or_test_split_is_read_as_such(monkeypatch):
    """A TFDS set like downsampled_imagenet (images only; a validation split instead of a test split)
    loads with the validation split held out and is marked unlabelled, so a class-conditional run
    on it is refused instead of training on zero labels."""
    import tensorflow_datasets as tfds

    def fake_source(name, split, data_dir=None, download=True):
        if split == "test":
            raise ValueError(f"Unknown split {split!r}")
        return [{"image": np.full((32, 32, 3), i, np.uint8)} for i in range(8 if split == "train" else 4)]
    monkeypatch.setattr(tfds, "data_source", fake_source)
    train, heldout = datasets.load_splits("tfds:imagesonly", image_size=32, holdout_fraction=0.0)
    assert (len(train), len(heldout)) == (8, 4) and not train.labelled and not heldout.labelled
    assert train.images.shape == (8, 32, 32, 3) and not train.labels.any()
    datasets.check_split(train, channels=3, num_classes=None, source="tfds:imagesonly")
    with pytest.raises(ValueError, match="has no labels"):
        datasets.check_split(train, channels=3, num_classes=1000, source="tfds:imagesonly")


def test_celeba_is_cropped_to_ddims_face_box():
    """data.crop='celeba_ddim' keeps rows 57–184 and columns 25–152 of a 218×178 image (DDIM's
    box around (cx, cy) = (89, 121)), then resizes; the default keeps the centre square; a box
    larger than the images and an unknown crop are refused."""
    rows, cols = np.meshgrid(np.arange(218), np.arange(178), indexing="ij")
    image = np.stack([rows % 256, cols % 256, (rows + cols) % 256], -1).astype(np.uint8)[None]
    np.testing.assert_array_equal(datasets.resize_images(image, 128, "celeba_ddim")[0], image[0, 57:185, 25:153])
    np.testing.assert_array_equal(datasets.resize_images(image, 178)[0], image[0, 20:198])
    small = datasets.resize_images(image, 64, "celeba_ddim")[0]
    np.testing.assert_allclose(small[..., 0].mean(axis=1), np.arange(57, 185).reshape(64, 2).mean(axis=1), atol=0.6)
    with pytest.raises(ValueError, match="does not fit 100×100"):
        datasets.resize_images(np.zeros((1, 100, 100, 3), np.uint8), 64, "celeba_ddim")
    with pytest.raises(ValueError, match="unknown crop 'face'"):
        datasets.resize_images(image, 64, "face")
