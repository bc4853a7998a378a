"""Bad settings and bad data are refused before any work, naming the field and the fix; a refused
run leaves what was saved as it was (issue 17)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import base, mnist_cfg, swissroll
from diffusion import schedules
from diffusion.checkpoints import CorruptCheckpointError
from experiments import build, draw_cache, inference, loop, results
from tiny_configs import set_fields, shrink

REPO = Path(__file__).resolve().parents[1]


def tiny():
    return shrink(base.get_config())


def cli(*args):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"))
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("field, value, message", [
    ("train.keep_checkpoints", 0, r"train.keep_checkpoints=0 must be an integer >= 1 .*delete them all"),
    ("train.checkpoint_every", 0, "train.checkpoint_every=0 must be an integer >= 1"),
    ("train.log_every", 0, "train.log_every=0"),
    ("optim.lr", 0.0, r"optim.lr=0.0 must be a finite number > 0"),
    ("optim.lr", -1e-3, r"optim.lr=-0.001 must be"),
    ("optim.lr", float("nan"), r"optim.lr=nan must be"),
    ("optim.decay", "cooldown", r"optim.cooldown_steps=0 with decay 'cooldown': the final decay needs 1 to \d+ steps"),
    ("optim.cooldown_steps", 2, r"optim.cooldown_steps=2 is read only with optim.decay='cooldown' \(it is 'constant'\)"),
    ("sample.steps", 0, r"sample.steps=0 for 'ddim' must be an integer >= 1"),
    ("sample.steps", 1001, r"sample.steps=1001 for 'ddim' exceeds the schedule's T = 1000"),
    ("sample.num", 0, "sample.num=0"),
    ("sample.clip_max", 2.0, r"sample.clip_max=2.0 bounds the dynamic threshold .* needs sample.clip='dynamic'"),
])
def test_impossible_settings_are_refused_before_any_work(tmp_path, field, value, message):
    c = set_fields(tiny(), {field: value})
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(c, tmp_path)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("sampler, steps, message", [
    ("ddim", 0, "must be an integer >= 1"),          # once silently ran sample.steps and was labelled ddim0
    ("ddpm", 1001, "exceeds the schedule's T = 1000"),   # once silently ran T and was labelled ddpm1001
    ("pc", 2000, "exceeds"),
    ("euler", 10, "unknown sampler 'euler'"),
    ("heun", 1, "'heun' needs at least 2 steps"),
])
def test_a_sampler_step_count_it_cannot_run_is_refused(sampler, steps, message):
    c = tiny()
    with pytest.raises(ValueError, match=message):
        build.make_sampler(c, schedules.make_schedule("linear", 1000), sampler=sampler, steps=steps)


@pytest.mark.parametrize("text", ["ddim", "ddim:0", "ddim:-3", "ddim:1.5", "ddim:x", "ddim:10:abc", "ddim:10:-1",
                                  "ddim:10:0:1", "euler:10", "ddim:10:nan"])
def test_a_malformed_sampler_setting_is_refused(text):
    with pytest.raises(ValueError, match="is not name:steps\\[:eta\\]"):
        draw_cache.parse_setting(text)
    assert draw_cache.parse_setting("ddim:20:0.5") == ("ddim", 20, 0.5)
    with pytest.raises(ValueError, match="'heun:10:0.5': heun has no η"):     # once silently dropped
        draw_cache.parse_setting("heun:10:0.5")


def write_npz(path, images, labels=None):
    arrays = {"image": images} if labels is None else {"image": images, "label": labels}
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("label_too_large", r"labels in \[0, 10\], outside \[0, data.num_classes=10\)"),
    ("negative_label", r"negative labels \(as low as -1\)"),
    ("float_labels", "'label' must be integers"),
    ("short_labels", r"one per image \(40\)"),
    ("rgb_for_one_channel", "3-channel images .* data.channels=1"),
    ("channels_first", "looks channels-first"),
])
def test_data_the_config_would_misread_is_refused(tmp_path, case, message):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(40, dtype=np.int64) % 10
    if case == "label_too_large":
        labels[7] = 10
    elif case == "negative_label":
        labels[3] = -1
    elif case == "float_labels":
        labels = labels.astype(np.float32)
    elif case == "short_labels":
        labels = labels[:30]
    elif case == "rgb_for_one_channel":
        images = np.repeat(images, 3, axis=-1)
    elif case == "channels_first":
        images = images.transpose(0, 3, 1, 2)
    c = shrink(mnist_cfg.get_config())          # class-conditional: its labels are used
    c.data.source = write_npz(tmp_path / "data.npz", images, labels)
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    if case in ("label_too_large", "negative_label"):   # an unconditional model never reads them
        unconditional = tiny()
        unconditional.data.source = c.data.source
        build.load_data(unconditional)


def test_a_class_the_model_cannot_draw_is_refused():
    conditional, unconditional = mnist_cfg.get_config(), base.get_config()
    for label in (10, -2):
        with pytest.raises(ValueError, match=f"--label={label} is not a class of this run: use 0 … 9"):
            inference.check_label(conditional, label)
    with pytest.raises(ValueError, match="unconditional .* no effect"):
        inference.check_label(unconditional, 3)
    inference.check_label(unconditional, 3, guide="classifier")     # a label for the classifier: fine
    inference.check_label(conditional, 9)


def test_a_mistyped_override_is_one_line_naming_the_closest_field(tmp_path):
    proc = cli("experiments.train", "--config", "configs/mnist.py", "--workdir", str(tmp_path / "run"),
               "--config.optim.lrr=1e-4")
    assert proc.returncode != 0
    assert proc.stderr.strip() == ("error: --config.optim.lrr is not a field of configs/mnist.py; "
                                   "did you mean --config.optim.lr?")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def trained(tiny_run):
    """The session's tiny run trained to step 4 (checkpoints at 2 and 4): ``tiny()``'s."""
    return tiny_run[0]


@pytest.mark.system
def test_a_refused_resume_leaves_the_runs_config(trained):
    saved = (trained / "config.json").read_text()
    other = tiny()
    other.diffusion.schedule = "cosine"
    with pytest.raises(ValueError, match="diffusion.schedule: checkpoint 'linear' vs config 'cosine'"):
        loop.train_and_evaluate(other, trained)
    shorter = tiny()
    shorter.train.num_steps = 2
    with pytest.raises(ValueError, match="train.num_steps=2 is below step 4 already reached"):
        loop.train_and_evaluate(shorter, trained)
    assert (trained / "config.json").read_text() == saved
    assert inference.load_run(trained).step == 4          # the run still samples


@pytest.mark.system
def test_sample_refuses_bad_counts_and_labels(trained):
    for args, message in [(("--num", "0"), "--num=0 must be an integer >= 1"),
                          (("--batch", "0"), "--batch=0 must be an integer >= 1"),
                          (("--steps", "0"), "--steps=0 must be an integer >= 1"),
                          (("--sampler", "ddpm", "--steps", "1001"), "--steps=1001 for 'ddpm' exceeds"),
                          (("--label", "3"), "unconditional")]:
        proc = cli("experiments.sample", "--workdir", str(trained), *args)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr[-2000:])
    assert not (trained / "sample").exists()


@pytest.mark.system
def test_evaluate_refuses_a_setting_beyond_T_before_sampling(trained):
    with pytest.raises(ValueError, match="ddpm:1001 steps=1001 for 'ddpm' exceeds the schedule's T = 1000"):
        results.evaluate_run(trained, [("ddim", 2, 0.0), ("ddpm", 1001, 0.0)], results.Draws(num=8, batch=8))
    with pytest.raises(ValueError, match="--num=0"):
        results.evaluate_run(trained, [("ddim", 2, 0.0)], results.Draws(num=0, batch=8))
    with pytest.raises(ValueError, match=r"no checkpoint of step 3 .* keeps steps \[2, 4\]"):
        results.evaluate_run(trained, [("ddim", 2, 0.0)], results.Draws(num=8, batch=8), step=3)
    for args in [("--cascade", f"heldout,{trained}", "--weights", "raw"),
                 ("--unclip", f"{trained},{trained}", "--spacing", "trailing")]:
        proc = cli("experiments.evaluate", *args)
        assert proc.returncode != 0 and "--cascade and --unclip measure each stage's latest EMA" in proc.stderr, \
            (args, proc.stderr[-2000:])
    assert not (trained / "eval").exists()


@pytest.mark.system
def test_sample_draws_the_toy_figure_for_a_2d_run(tmp_path):
    c = shrink(swissroll.get_config(), steps=2)
    loop.train_and_evaluate(c, tmp_path)
    proc = cli("experiments.sample", "--workdir", str(tmp_path), "--sampler", "ddpm", "--steps", "10",
               "--num", "64", "--batch", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tag = "ddpm10_eta0_unguided0_seed0"
    with np.load(tmp_path / "sample" / f"{tag}.npz") as f:
        assert f["points"].shape == (64, 2) and np.isfinite(f["points"]).all()
        assert np.abs(f["points"]).max() > 1     # the config's sample.clip='none' holds: no clipping to [−1, 1]
    from PIL import Image
    with Image.open(tmp_path / "sample" / f"{tag}.png") as img:
        assert img.width > 3 * img.height      # data | samples | reverse frames side by side
    proc = cli("experiments.sample", "--workdir", str(tmp_path), "--steps", "10", "--interpolate")
    assert proc.returncode != 0 and "2-D toy run" in proc.stderr


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")   # orbax's, see test_checkpoints
@pytest.mark.system
def test_a_corrupt_checkpoint_is_fallen_back_from_only_when_asked(trained, tmp_path):
    from test_checkpoints import damage
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    damage(run / "checkpoints", 4)
    with pytest.raises(CorruptCheckpointError,
                       match=r"checkpoints/4 is corrupt: .*; rerun the training command .* with --fall_back_to_good_checkpoint to move it "
                             r"to .*corrupt_checkpoints/ and resume from step 2"):
        loop.train_and_evaluate(tiny(), run)
    assert (run / "checkpoints" / "4").is_dir()            # refused, untouched
    state = loop.train_and_evaluate(tiny(), run, fall_back=True)
    assert int(state.step) == 4 and (run / "corrupt_checkpoints" / "4").is_dir()
    for a, b in zip(jax.tree.leaves(inference.load_run(trained).params), jax.tree.leaves(state.ema_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # steps 3–4 retrained bit for bit


@pytest.mark.parametrize("entry", ["train", "train_classifier", "sample", "evaluate", "reproduce"])
def test_entry_point_docstrings_hold_no_percent_sign_for_absl_help(entry):
    """absl %-formats the module docstring for --help when it holds a '%' (evaluate's '≥ 90% sure'
    once printed as '≥ 90/…/evaluate.pyure')."""
    import ast
    doc = ast.get_docstring(ast.parse((REPO / "experiments" / f"{entry}.py").read_text()), clean=False)
    assert doc.count("%") == 2 * doc.count("%%") == 0
