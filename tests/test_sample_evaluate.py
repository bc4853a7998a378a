"""Sampling and evaluation entry points on a tiny class-conditional run: files, shapes, caching,
the NLL decomposition, classifier training and classifier guidance end to end."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from configs import classifier_fashion_mnist, classifier_mnist, mnist_cfg, noisy_classifier_mnist
from diffusion import parallel
from diffusion.data import datasets
from experiments import build, classifier_loop, draw_cache, inference, loop, nll, results
from tiny_configs import assert_same_params, same_params, shrink

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step class-conditional run (checkpoints at steps 2 and 4) and its final TrainState."""
    workdir = tmp_path_factory.mktemp("cfg_run")
    return workdir, loop.train_and_evaluate(shrink(mnist_cfg.get_config()), workdir)


@pytest.fixture(scope="module")
def run_dir(trained):
    return trained[0]


@pytest.fixture(scope="module")
def noisy_classifier_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("noisy_classifier")
    c = shrink(noisy_classifier_mnist.get_config(), steps=3)
    _, report = classifier_loop.train_classifier(c, workdir)
    assert set(report) == {"heldout_examples", "accuracy_t0", "accuracy_t250", "accuracy_t500"}
    return workdir


def run_cli(*args):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"))
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("config, heldout", [(classifier_mnist, 1000), (classifier_fashion_mnist, 10_000)])
@pytest.mark.system
def test_feature_classifier_trains_resumes_and_reports(tmp_path, config, heldout):
    c = shrink(config.get_config(), steps=3)
    if not Path(c.data.source).exists() and c.data.source != "mnist":
        pytest.skip(f"{c.data.source} is not beside this checkout")
    state, report = classifier_loop.train_classifier(c, tmp_path)
    assert int(state.step) == 3 and 0.0 <= report["accuracy"] <= 1.0
    assert json.loads((tmp_path / "accuracy.json").read_text())["heldout_examples"] == heldout
    if heldout <= 1000:   # the accuracy again, from one unsharded pass over the whole split
        split = build.training_data(c, labels_used=True)[1]
        rows = split.rows(0, len(split))
        logits = build.make_classifier(c).apply({"params": state.ema_params}, datasets.to_model_range(rows.images))[0]
        assert report["accuracy"] == np.sum(np.argmax(np.asarray(logits), -1) == rows.labels) / len(rows)
    assert (tmp_path / "classifier.msgpack").stat().st_size > 0
    again, _ = classifier_loop.train_classifier(c, tmp_path)        # resumes at the end: no more steps
    assert int(again.step) == 3


def test_sample_cli_writes_grids_samples_and_pictures(run_dir, noisy_classifier_dir):
    out = run_cli("experiments.sample", "--workdir", str(run_dir), "--steps", "2", "--num", "12", "--batch", "8",
                  "--guidance", "classifier_free", "--scale", "2", "--label", "3",
                  "--trajectory", "--interpolate", "--reconstruct")
    tag = "ddim2_eta0_classifier_free2_seed0"
    with np.load(run_dir / "sample" / f"{tag}.npz") as f:
        assert f["image"].shape == (12, 28, 28, 1) and f["image"].dtype == np.uint8
        assert (f["label"] == 3).all()
    for suffix in ("", "_trajectory", "_interpolation", "_reconstruction"):
        with Image.open(run_dir / "sample" / f"{tag}{suffix}.png") as img:
            assert img.width > 28 and img.height > 28
    assert "mean squared error" in out
    # Classifier guidance with the trained noisy classifier, on a respaced DDPM.
    run_cli("experiments.sample", "--workdir", str(run_dir), "--sampler", "ddpm", "--steps", "3", "--num", "8",
            "--batch", "8", "--guidance", "classifier", "--scale", "1",
            "--classifier_workdir", str(noisy_classifier_dir))
    assert (run_dir / "sample" / "ddpm3_eta0_classifier1_seed0.png").exists()


@pytest.mark.system
def test_evaluate_reports_fid_is_and_an_nll_that_adds_up(run_dir):
    settings = [("ddim", 2, 0.0), ("ddpm", 3, 0.0)]
    rows, nlls = results.evaluate_run(run_dir, settings, results.Draws(num=16, batch=8),
                                      results.Measures(nll_examples=8))
    vlb = nlls["vlb"]
    heldout, *samples = rows
    assert heldout["num"] == 1000 and heldout["is_mean"] > 8.5 and heldout["confident_0.9"] > 0.95
    for row in samples:
        assert row["num"] == 16 and np.isfinite(row["fid"]) and row["fid"] > heldout["fid"]
        assert 0 < row["fid_se"] < row["fid"]
        assert 1.0 <= row["is_mean"] <= 10.0
    assert vlb["num"] == 8
    assert vlb["bits_per_dim"] == pytest.approx(vlb["prior"] + vlb["decoder_L0"] + vlb["sum_Lt"], rel=1e-5)
    run = inference.load_run(run_dir)                       # the per-step means behind L_0 and Σ L_t, one per step
    assert len(vlb["per_step_bpd"]) == len(vlb["per_step_eps_mse"]) == run.schedule.num_steps
    assert min(vlb["per_step_eps_mse"]) > 0
    assert vlb["decoder_L0"] == vlb["per_step_bpd"][0]
    assert (run_dir / "eval" / "results.md").read_text().count("\n|") == 5     # header, rule, 3 rows
    for name in ("ddim2_eta0.json", "ddpm3.json", "nll.json"):
        assert json.loads((run_dir / "eval" / name).read_text())["step"] == run.step
    [cached] = (run_dir / "eval").glob("samples_ddim2_eta0_seed0_step*.npz")
    stamp = cached.stat().st_mtime_ns
    again, _ = results.evaluate_run(run_dir, settings[:1], results.Draws(num=16, batch=8))
    assert cached.stat().st_mtime_ns == stamp and again[1]["fid"] == pytest.approx(samples[0]["fid"])
    table = (run_dir / "eval" / "results.md").read_text()       # still every setting measured at this step
    assert table.count("\n|") == 5 and "| ddpm3 |" in table and f"{vlb['bits_per_dim']:.3f}" in table


@pytest.mark.system
def test_evaluate_on_another_spacing_draws_what_the_run_configured_with_it_would(run_dir, tmp_path):
    """``spacing`` stands for the config's ``sample.spacing``: the samples equal those of the run with
    that field changed, named apart from (and unlike) the run's own spacing's."""
    workdir = tmp_path / "run"
    shutil.copytree(run_dir, workdir, ignore=shutil.ignore_patterns("eval"))
    rows, _ = results.evaluate_run(workdir, [("ddim", 2, 0.0)], results.Draws(num=16, batch=8, spacing="trailing"),
                                   results.Measures(stats_dir=run_dir / "eval" / "reference_stats"))
    assert rows[1]["name"] == "ddim2_trailing_eta0" and rows[1]["spacing"] == "trailing"
    assert json.loads((workdir / "eval" / "ddim2_trailing_eta0.json").read_text())["spacing"] == "trailing"
    [cached] = (workdir / "eval").glob("samples_ddim2_trailing_eta0_seed0_step*.npz")
    run, mesh = inference.load_run(workdir), parallel.make_mesh()
    config = run.config.copy_and_resolve_references()
    config.sample.spacing = "trailing"
    configured = draw_cache.samples_for(dataclasses.replace(run, config=config), mesh, tmp_path, "ddim", 2, 0.0,
                                        num=16, batch=8, seed=0)
    np.testing.assert_array_equal(np.load(cached)["image"], configured)
    (tmp_path / "own").mkdir()
    own = draw_cache.samples_for(run, mesh, tmp_path / "own", "ddim", 2, 0.0, num=16, batch=8, seed=0)
    assert run.config.sample.spacing == "" and not np.array_equal(own, configured)


@pytest.mark.slow     # ~75 s cold: hundreds of ODE steps with the divergence estimate (tests/test_likelihood.py checks the likelihood itself)
def test_evaluate_reports_the_ode_likelihood_beside_the_bound(run_dir):
    """``--nll vlb,ode``: the probability-flow NLL of the trained model is finite, costs network
    evaluations, is recorded in eval/nll_ode.json and stated in results.md after the bound; on
    8-bit data it is an upper bound of a discrete NLL, so at least 0 bits/dim."""
    _, nlls = results.evaluate_run(run_dir, [], results.Draws(num=16, batch=8),
                                   results.Measures(nll_examples=4, nll_methods=("vlb", "ode")))
    ode = nlls["ode"]
    assert ode["num"] == 4 and np.isfinite(ode["bits_per_dim"]) and ode["bits_per_dim"] > 0 and ode["stderr"] > 0
    assert ode["evaluations"] >= 12 and ode["uses"] == "the ε̂ channels"
    assert json.loads((run_dir / "eval" / "nll_ode.json").read_text())["step"] == inference.load_run(run_dir).step
    table = (run_dir / "eval" / "results.md").read_text()
    assert table.index("NLL (variational bound)") < table.index("NLL (probability-flow ODE)")
    config = inference.load_run(run_dir).config
    config.diffusion.variance = "learned_range"
    with pytest.raises(ValueError, match="uses only the ε̂ channels.*--ode_ignores_learned_variance"):
        nll.check_method("ode", config)
    nll.check_method("ode", config, ode_ignores_learned_variance=True)
    with pytest.raises(ValueError, match="unknown NLL method 'elbo'"):
        nll.check_method("elbo", config)


@pytest.mark.system
def test_evaluate_measures_a_kept_checkpoint_by_its_ema_or_its_raw_weights(trained):
    """``step`` and ``weights``: the raw parameters are the trained ones (``TrainState.params``), not
    their EMA; an older checkpoint's records go to eval/step<n>_<weights>/ and leave the latest EMA's
    records in eval/ as they were; a step the run did not keep is refused, naming the kept ones."""
    run_dir, state = trained
    raw, ema = inference.load_run(run_dir, weights="raw"), inference.load_run(run_dir)
    assert_same_params(raw, state)                                       # TrainState.params
    assert_same_params(ema, SimpleNamespace(params=state.ema_params))
    assert not same_params(raw, ema)
    older = inference.load_run(run_dir, step=2, weights="raw")
    assert older.step == 2 and not same_params(older, raw)
    latest_records = {p.name: p.read_bytes() for p in (run_dir / "eval").glob("*.json")}
    rows, _ = results.evaluate_run(run_dir, [("ddim", 2, 0.0)], results.Draws(num=16, batch=8), step=2, weights="raw")
    out = run_dir / "eval" / "step2_raw"
    assert json.loads((out / "ddim2_eta0.json").read_text())["fid"] == rows[1]["fid"]
    assert json.loads((out / "ddim2_eta0.json").read_text())["step"] == 2
    assert (out / "results.md").read_text().startswith(f"# {run_dir} at step 2 (raw weights, no EMA)")
    assert len(list(out.glob("samples_ddim2_eta0_seed0_step2.npz"))) == 1
    assert {p.name: p.read_bytes() for p in (run_dir / "eval").glob("*.json")} == latest_records
    with pytest.raises(ValueError, match=r"no checkpoint of step 3 .* keeps steps \[2, 4\].*train.keep_period"):
        inference.load_run(run_dir, step=3)
    with pytest.raises(ValueError, match="weights='ema_params': a checkpoint holds 'ema' or 'raw'"):
        inference.load_run(run_dir, weights="ema_params")


def test_a_larger_num_extends_the_cached_samples_exactly(run_dir, tmp_path):
    run, mesh = inference.load_run(run_dir), parallel.make_mesh()
    fresh = draw_cache.samples_for(run, mesh, tmp_path, "ddim", 2, 0.0, num=24, batch=8, seed=5)
    draw_cache.samples_for(run, mesh, run_dir / "eval", "ddim", 2, 0.0, num=12, batch=8, seed=5)
    extended = draw_cache.samples_for(run, mesh, run_dir / "eval", "ddim", 2, 0.0, num=24, batch=8, seed=5)
    np.testing.assert_array_equal(extended, fresh)     # kept batch 0, redrew the partial batch 1, drew batch 2
