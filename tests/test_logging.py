"""A run's logs through clu's metric writers (metrics.jsonl, TensorBoard events) and the held-out
evaluation every train.eval_every steps."""
import importlib.util
import io
import json
import struct
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from configs import base
from diffusion import likelihood, losses
from diffusion.data import datasets
from experiments import build, heldout, loop
from tiny_configs import shrink

REPO = Path(__file__).resolve().parents[1]
TRAIN_KEYS = {"step", "loss", "mse", "grad_norm", "lr", "steps_per_sec", "images_per_sec"}


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def events(workdir):
    """Every event in the run's TensorBoard files (TFRecord framing: length, its CRC, data, CRC)."""
    out = []
    for path in sorted((workdir / "tensorboard").iterdir()):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            out.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
            i += 12 + n + 4
    return out


def test_scalars_and_the_sample_grid_reach_jsonl_and_tensorboard(tiny_run):
    c, (tmp_path, _) = shrink(base.get_config()), tiny_run      # the run trained with c
    logged = rows(tmp_path)
    # The metrics.jsonl format is unchanged: one flat row of floats per logged step.
    assert [r["step"] for r in logged] == [1, 2, 3, 4] and all(set(r) == TRAIN_KEYS for r in logged)
    assert all(isinstance(v, float) for r in logged for k, v in r.items() if k != "step")
    lr = build.learning_rate_schedule(c)
    assert [r["lr"] for r in logged] == [float(lr(s)) for s in range(4)]    # the update's own step, from 0
    np.testing.assert_allclose([r["lr"] for r in logged], [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)   # warm-up 2
    assert all(r["images_per_sec"] == r["steps_per_sec"] * c.train.batch_size for r in logged)
    scalars, images = {}, {}
    for e in events(tmp_path):
        for v in e.summary.value:
            if v.HasField("image"):
                images[(v.tag, e.step)] = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))
            else:
                scalars[(v.tag, e.step)] = v.simple_value
    assert scalars.keys() == {(k, r["step"]) for r in logged for k in TRAIN_KEYS - {"step"}}
    for r in logged:
        for k in TRAIN_KEYS - {"step"}:
            np.testing.assert_allclose(scalars[(k, r["step"])], r[k], rtol=1e-6)
    grid = np.asarray(Image.open(tmp_path / "samples" / "step_0000004.png").convert("RGB"))
    assert list(images) == [("samples", 4)]
    np.testing.assert_array_equal(images[("samples", 4)][..., :3], grid)


@pytest.mark.system
def test_eval_every_logs_the_heldout_loss_of_the_ema_at_fixed_noise(tmp_path):
    """eval_every = 2, log_every = 3 (T = 40): rows at 2 (an evaluation step logs), 3 and 4 (the last), the
    evaluation at 2 and 4 only; at 4 it equals the loss computed here, unjitted, of the final EMA on
    the same held-out batches, timesteps and noise, and the bound of the same 8 images and key."""
    c = shrink(base.get_config())
    c.train.log_every, c.train.eval_every = 3, 2
    c.diffusion.num_steps = 40      # the bound is T network passes per image
    state = loop.train_and_evaluate(c, tmp_path)
    logged = rows(tmp_path)
    assert [r["step"] for r in logged] == [2, 3, 4]
    assert [set(r) - TRAIN_KEYS for r in logged] == [{"eval/loss", "eval/bpd"}, set(), {"eval/loss", "eval/bpd"}]
    model, schedule = build.make_model(c), build.make_schedule(c)
    model_fn = build.make_denoiser(model, state.ema_params)
    _, split = build.load_data(c)
    batches = heldout.loss_batches(c, split, schedule.num_steps)
    assert len(batches) == heldout.LOSS_BATCHES
    every = {k: np.concatenate([b[k] for b in batches]) for k in ("image", "t", "noise")}   # one device, one call
    loss = jax.jit(lambda x, t, noise: losses.training_losses(model_fn, schedule, x, t, noise,
                                                              **build.loss_kwargs(c))["loss"])(**{
        "x": every["image"], "t": every["t"], "noise": every["noise"]})
    np.testing.assert_allclose(logged[-1]["eval/loss"], np.mean(loss), rtol=1e-5)
    assert logged[0]["eval/loss"] != logged[-1]["eval/loss"]
    x = every["image"][:heldout.BOUND_EXAMPLES]
    bound = jax.jit(lambda x: likelihood.variational_bound(model_fn, schedule, x, jax.random.key(c.seed + 3),
                                                           decoder=c.diffusion.decoder, **build.output_kwargs(c)))(x)
    assert np.isfinite(logged[-1]["eval/bpd"]) and logged[-1]["eval/bpd"] > 0
    np.testing.assert_allclose(logged[-1]["eval/bpd"], np.mean(bound["total"]), rtol=1e-5)


@pytest.mark.system
def test_the_recipe_generalization_gap_pairs_training_and_heldout_rows(tiny_run):
    """docs/main_job/generalization_gap.py (recipe stage 9): each split's loss at the run's EMA is the
    mean training loss of its first examples under the same timesteps and noise (loss_batches' draws
    do not depend on the split), computed here in one unsharded call per split."""
    spec = importlib.util.spec_from_file_location("gap", REPO / "docs" / "main_job" / "generalization_gap.py")
    gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gap)
    workdir, state = tiny_run
    c = shrink(base.get_config())
    (result,) = gap.generalization_gap(workdir, batches=3)
    assert result["examples"] == 3 * c.train.batch_size
    model, schedule, splits = build.make_model(c), build.make_schedule(c), build.load_data(c)
    draws = heldout.loss_batches(c, splits[1], schedule.num_steps, 3)
    t, noise = (np.concatenate([b[k] for b in draws]) for k in ("t", "noise"))
    for name, split in zip(("train", "heldout"), splits):
        x = datasets.to_model_range(split.images[:result["examples"]])
        loss = losses.training_losses(build.make_denoiser(model, state.ema_params), schedule, x, t, noise,
                                      **build.loss_kwargs(c))["loss"]
        np.testing.assert_allclose(result[name], np.mean(loss), rtol=1e-5)
    assert result["train"] != result["heldout"]
