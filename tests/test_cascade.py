"""Cascaded diffusion (Ho et al. 2021): conditioning augmentation against q(z_s | z_0), truncation
stopping at s, the blur kernel, the shared resize, the super-resolution U-Net's inputs, a two-stage
cascade trained with experiments.train machinery, sampled and measured, and the refusals."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from diffusion import parallel, samplers, schedules
from diffusion.cascade import augmentation
from diffusion.data import datasets
from diffusion.models.unet import UNet
from experiments import build, inference, loop, results, sample
from experiments.cascade import chain
from experiments.studies import plan
from tiny_configs import shrink, step_batch

T = 100
SCHEDULE = schedules.make_schedule("linear", T)


def test_gaussian_augmentation_at_level_s_is_q_of_z_s_given_z_0():
    """Monte Carlo moments of z_s over 20,000 draws against N(√ᾱ_s z_0, (1 − ᾱ_s) I), within 5 s.e."""
    n, s = 20_000, 37
    z0 = jnp.broadcast_to(jnp.array([-0.8, 0.1, 0.6, 1.0]).reshape(1, 2, 2, 1), (n, 2, 2, 1))
    z, levels = augmentation.gaussian_augment(jax.random.split(jax.random.key(0), n), SCHEDULE, z0, (s, s))
    a = float(SCHEDULE.alphas_cumprod[s])
    assert bool(jnp.all(levels == s))
    mean, var = np.asarray(z.mean(0)), np.asarray(z.var(0))
    np.testing.assert_allclose(mean, np.sqrt(a) * np.asarray(z0[0]), atol=5 * np.sqrt((1 - a) / n))
    np.testing.assert_allclose(var, np.full_like(var, 1 - a), atol=5 * (1 - a) * np.sqrt(2 / n))
    corrupted = augmentation.corrupt(SCHEDULE, z0, s, jax.random.key(1))     # the non-truncated form: the same law
    np.testing.assert_allclose(np.asarray(corrupted.mean(0)), np.sqrt(a) * np.asarray(z0[0]), atol=5 * np.sqrt((1 - a) / n))


def test_training_levels_cover_the_range_and_no_more():
    _, levels = augmentation.gaussian_augment(jax.random.split(jax.random.key(2), 4000), SCHEDULE,
                                         jnp.zeros((4000, 2, 2, 1)), (10, 20))
    assert set(np.asarray(levels).tolist()) == set(range(10, 21))


@pytest.mark.parametrize("sampler, steps", [("ddim", 20), ("ddim", T), ("dpmpp_2m", 10), ("ddpm", 25)])
def test_truncated_sampling_stops_at_s_exactly(sampler, steps):
    """With x̂_0 = 0 a deterministic step maps x_t to x_t·√(1 − ᾱ_t′)/√(1 − ᾱ_t), so the chain ends at
    x_T·√(1 − ᾱ_s)/√(1 − ᾱ_first): the last level is s itself, not s ± 1; an ancestral (respaced)
    sampler's chain gets s among its kept steps, with ᾱ_s there."""
    s = 41
    step, run_schedule, timesteps = samplers.plan(sampler, SCHEDULE, steps, prediction="x0")
    run_schedule, timesteps, t_end = augmentation.truncate(SCHEDULE, run_schedule, timesteps, s,
                                                      samplers.SAMPLERS[sampler].respaced)
    assert float(run_schedule.alphas_cumprod[t_end]) == pytest.approx(float(SCHEDULE.alphas_cumprod[s]), rel=1e-6)
    assert int(run_schedule.timesteps[t_end]) == s and bool(jnp.all(timesteps > t_end))
    if sampler == "ddpm":
        return
    x_T = jax.random.normal(jax.random.key(3), (4, 3))
    zero = lambda x, t, **_: jnp.zeros_like(x)
    out = samplers.sample(step, zero, run_schedule, x_T, jax.random.key(4), timesteps=timesteps, t_end=t_end)
    first = int(timesteps[0])
    level = lambda i: float(jnp.sqrt((1 - SCHEDULE.alphas_cumprod[i]) / (1 - SCHEDULE.alphas_cumprod[first])))
    np.testing.assert_allclose(out, x_T * level(s), rtol=1e-5)
    assert not np.allclose(out, x_T * level(s + 1), rtol=1e-4) and not np.allclose(out, x_T * level(s - 1), rtol=1e-4)


def test_blur_kernel_sums_to_one_and_sigma_stays_in_its_range():
    for sigma in (0.3, 0.5, 1.0, 2.0):
        for size in (3, 5):
            assert float(augmentation.blur_kernel(sigma, size).sum()) == pytest.approx(1.0, abs=1e-6)
    z0 = jax.random.normal(jax.random.key(5), (2000, 6, 6, 2))
    blurred, sigma = augmentation.blur_augment(jax.random.split(jax.random.key(6), 2000), z0, (0.4, 0.6), 3)
    assert 0.4 <= float(sigma.min()) < 0.41 and 0.59 < float(sigma.max()) <= 0.6
    np.testing.assert_allclose(augmentation.blur(jnp.full((5, 5, 1), 0.7), 0.5, 3), 0.7, rtol=1e-6)  # a constant stays
    assert float(blurred.var()) < float(z0.var())
    wider = jax.vmap(lambda z: augmentation.blur(z, 1.5, 3))(z0)
    assert float(wider.var()) < float(blurred.var())


def test_blur_augmentation_blurs_the_chosen_share_of_examples_and_leaves_the_rest_sharp():
    z0 = jax.random.normal(jax.random.key(5), (4000, 6, 6, 1))
    keys = jax.random.split(jax.random.key(7), 4000)
    out, sigma = augmentation.blur_augment(keys, z0, (0.4, 0.6), 3, fraction=0.5)
    sharp = np.asarray(sigma) == 0
    assert abs(sharp.mean() - 0.5) < 4 * (0.25 / 4000) ** 0.5                # Bernoulli(0.5): within 4 s.e.
    np.testing.assert_array_equal(np.asarray(out)[sharp], np.asarray(z0)[sharp])
    expected = jax.vmap(lambda z, s: augmentation.blur(z, s, 3))(z0[~sharp], sigma[~sharp])
    np.testing.assert_allclose(np.asarray(out)[~sharp], expected, rtol=1e-6)
    assert float(sigma[~sharp].min()) >= 0.4


def test_low_resolution_is_the_datasets_area_resize():
    """The super-resolution stage's input is the image a base stage trained at that size sees."""
    split, _ = datasets.load_splits("mnist", image_size=28, holdout_fraction=0.1)
    images = split.images[:16]
    ours = datasets.to_uint8(np.asarray(augmentation.low_resolution(datasets.to_model_range(images), 14)))
    assert np.abs(ours.astype(int) - datasets.resize_images(images, 14).astype(int)).max() <= 1
    assert augmentation.upsample(jnp.zeros((2, 14, 14, 1)), 28).shape == (2, 28, 28, 1)


@pytest.mark.system
def test_the_conditioning_image_and_the_level_change_the_output():
    model = UNet(out_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), attention_resolutions=(),
                 dropout=0.0, norm_groups=4)
    x, t = jax.random.normal(jax.random.key(7), (2, 8, 8, 1)), jnp.array([5, 50])
    low = jax.random.normal(jax.random.key(8), (2, 4, 4, 1))
    cond = augmentation.conditioning(low, 8, 10)
    params = model.init(jax.random.key(0), x, t, **cond)["params"]
    assert params["conv_in"]["kernel"].shape[2] == 2 and "aug_level_embedding" in params
    out = model.apply({"params": params}, x, t, **cond)
    other_image = model.apply({"params": params}, x, t, **augmentation.conditioning(-low, 8, 10))
    other_level = model.apply({"params": params}, x, t, **augmentation.conditioning(low, 8, 90))
    assert float(jnp.abs(out - other_image).max()) > 1e-3 and float(jnp.abs(out - other_level).max()) > 1e-3


def tiny_stage(data, low_resolution=0, augmentation="none"):
    c = shrink(base.get_config(), steps=2)
    c.data.source, c.diffusion.num_steps = data, T
    if low_resolution:
        c.data.low_resolution, c.cascade.augmentation = low_resolution, augmentation
        if augmentation == "gaussian":
            c.cascade.aug_level_range, c.cascade.aug_level = (0, 50), 10
    else:
        c.data.image_size, c.model.attention_resolutions = 14, (7,)
    return c


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """A 14×14 base run and a 14 → 28 super-resolution run (Gaussian augmentation), two steps each
    through loop.train_and_evaluate (which also draws the SR run's conditioned grid)."""
    root = tmp_path_factory.mktemp("cascade")
    split, _ = datasets.load_splits("mnist", image_size=28, holdout_fraction=0.1)
    np.savez(root / "data.npz", image=split.images[:160], label=split.labels[:160])
    loop.train_and_evaluate(tiny_stage(str(root / "data.npz")), root / "base")
    loop.train_and_evaluate(tiny_stage(str(root / "data.npz"), 14, "gaussian"), root / "sr")
    return root


@pytest.mark.system
def test_a_two_stage_cascade_trains_samples_and_is_measured(stages):
    assert list((stages / "sr" / "samples").glob("*.png"))
    workdirs = [str(stages / "base"), str(stages / "sr")]
    for truncated in (False, True):
        settings = chain.Settings(sampler="ddim", steps=4, aug_levels=(10,), truncated=truncated)
        sample.sample_cascade(workdirs, settings, num=8, batch=8, seed=0, label=-1, out=stages / "out")
        tag = f"{chain.check_chain(workdirs, settings).tag}_seed0"
        with np.load(stages / "out" / f"{tag}.npz") as f:
            assert f["stage0"].shape == (8, 14, 14, 1) and f["stage1"].shape == (8, 28, 28, 1)
        assert (stages / "out" / f"{tag}_cascade.png").exists() and (stages / "out" / f"{tag}_stage1.png").exists()
    settings = chain.Settings(sampler="ddim", steps=4, aug_levels=(10,))   # the programs drawn above
    record = chain.evaluate(workdirs, settings, num=16, batch=8, features="classifier")
    assert np.isfinite(record["fid"]) and record["num"] == 16
    assert (stages / "sr" / "eval" / f"cascade_base_{chain.check_chain(workdirs, settings).tag}.json").exists()
    assert np.isfinite(record["upsampled_input"]["fid"]) and record["upsampled_input"]["num"] == 16


@pytest.mark.system
def test_a_cascade_on_held_out_images_conditions_on_them_shrunk_by_the_data_resize(stages):
    """``heldout`` first: stage 0 is the held-out split at 14×14 (the data loader's area resize of the
    same images, to uint8 rounding) in order, and the stage draws from it and is measured."""
    workdirs = [chain.HELDOUT, str(stages / "sr")]
    settings = chain.Settings(sampler="ddim", steps=4, aug_levels=(10,))
    runs, checked = chain.load(workdirs, settings)
    outputs = chain.draw(runs, chain.build_draw_fns(runs, parallel.make_mesh(), checked),
                                parallel.make_mesh(), checked, num=8, batch=8, seed=0)
    _, heldout = build.load_data(runs[1].config)
    by_loader = datasets.resize_images(heldout.images[:8], 14)
    assert outputs[0].shape == (8, 14, 14, 1) and outputs[1].shape == (8, 28, 28, 1)
    assert np.abs(outputs[0].astype(int) - by_loader.astype(int)).max() <= 1
    record = chain.evaluate(workdirs, settings, num=16, batch=8, features="classifier")
    assert np.isfinite(record["fid"]) and record["stages"][0] == chain.HELDOUT
    assert (stages / "sr" / "eval" / f"cascade_heldout_{checked.tag}.json").exists()
    with pytest.raises(ValueError, match="carry their own labels"):
        chain.draw(runs, [None, None], parallel.make_mesh(), checked, num=8, batch=8, seed=0, label=3)
    with pytest.raises(ValueError, match="held-out split has"):
        chain.draw(runs, [None, None], parallel.make_mesh(), checked, num=10 ** 6, batch=8, seed=0)


@pytest.mark.system
def test_a_super_resolution_run_refuses_to_sample_without_a_conditioning_image(stages):
    run = inference.load_run(stages / "sr")
    with pytest.raises(ValueError, match="super-resolution stage .* --cascade"):
        inference.build_draw_fn(run, None, sampler="ddim", steps=2)
    with pytest.raises(ValueError, match="super-resolution stage .* --cascade"):
        results.evaluate_run(stages / "sr", [("ddim", 2, 0.0)], results.Draws(num=8, batch=8))


@pytest.mark.system
def test_accumulated_micro_batches_augment_as_the_whole_batch_does():
    """The augmentation's draws are made per row for the whole batch (one key a row), so k = 2
    micro-batches give the parameters one step on all 16 rows gives."""
    states = []
    for k in (1, 2):
        c = tiny_stage("mnist", 14, "gaussian")
        c.optim.eps, c.optim.grad_accum_steps, c.optim.warmup_steps = 1e-3, k, 0   # the first update is lr, not 0
        model, schedule, tx = build.make_model(c), build.make_schedule(c), build.make_optimizer(c)
        mesh = parallel.make_mesh()
        state = loop.init_state(c, model, schedule, tx, jax.random.key(0))
        initial = jax.tree.map(np.asarray, state.params)
        state = jax.device_put(state, parallel.fsdp_shardings(state, mesh))
        step = loop.jit_step(loop.make_train_step(c, model, schedule, tx), state, mesh)
        split, _ = build.load_data(c)
        for micro in loop.micro_batches(step_batch(split, 16, 0, c.seed), k):
            state, _ = step(state, parallel.global_batch(micro, mesh))
        states.append(jax.tree.map(np.asarray, state.params))
        assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[-1]), jax.tree.leaves(initial)))
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.system
def test_a_stage_resumed_with_another_conditioning_is_refused(stages):
    with pytest.raises(ValueError, match="(?s)different model.*cascade.augmentation: checkpoint 'gaussian' vs config 'blur'"):
        loop.train_and_evaluate(tiny_stage(str(stages / "data.npz"), 14, "blur"), stages / "sr")


def fake_run(root, name, **fields):
    """A workdir holding only config.json: enough for the chain checks, which run before any checkpoint is read."""
    c = tiny_stage("mnist", **fields)
    (root / name).mkdir()
    (root / name / "config.json").write_text(json.dumps(c.to_dict(), default=list))
    return str(root / name)


@pytest.mark.parametrize("stages_, settings, message", [
    (("base",), {}, "at least one super-resolution"),
    (("sr_g", "sr_g"), {}, "starts with a base run"),
    (("base", "base"), {}, "is not a super-resolution stage .* makes 14×14×1"),
    (("base", "sr7"), {}, "conditioned on 7×7×1 images, but stage 0 .* makes 14×14×1"),
    (("base", "sr_g"), {"aug_levels": (T,)}, r"must be an integer schedule index in \[0, 100\)"),
    (("base", "sr_g"), {"aug_levels": (-1,)}, r"in \[0, 100\)"),
    (("base", "sr_g"), {"aug_levels": (60,)}, r"--aug_level for stage 1 .*=60 is outside the levels \[0, 50\] the stage was trained on"),
    (("base", "sr_none"), {"aug_levels": (10,)}, "trained with cascade.augmentation='none'"),
    (("base", "sr_none"), {"truncated": True}, "trained with cascade.augmentation='none'"),
    (("base", "sr_g"), {"scales": (1.0, 2.0, 3.0)}, "3 values for 2 stages"),
    (("heldout", "sr_g"), {"truncated": True}, "held-out images .* drop --truncated"),
    (("heldout", "sr_g"), {"scales": (2.0,)}, "give 0 for them"),
    (("heldout", "base"), {}, "is not a super-resolution stage"),
])
def test_a_cascade_that_does_not_chain_is_refused(tmp_path, stages_, settings, message):
    made = {"base": {}, "sr_g": dict(low_resolution=14, augmentation="gaussian"),
            "sr7": dict(low_resolution=7, augmentation="gaussian"), "sr_none": dict(low_resolution=14)}
    workdirs = [name if name == chain.HELDOUT else fake_run(tmp_path, f"{i}_{name}", **made[name])
                for i, name in enumerate(stages_)]
    with pytest.raises(ValueError, match=message):
        chain.check_chain(workdirs, chain.Settings(**settings))


@pytest.mark.parametrize("fields, message", [
    (dict(cascade=dict(augmentation="gaussian")), "set data.low_resolution"),
    (dict(data=dict(low_resolution=5)), "must be an integer in .* that divides"),
    (dict(data=dict(low_resolution=14), cascade=dict(augmentation="gaussian", aug_level_range=(0, 1000))),
     r"aug_level_range\[1\]=1000 must be an integer schedule index in \[0, 1000\)"),
    (dict(data=dict(low_resolution=14), cascade=dict(augmentation="gaussian", aug_level_range=(9, 3))), "low <= high"),
    (dict(data=dict(low_resolution=14), cascade=dict(augmentation="gaussian", aug_level_range=(0, 50), aug_level=60)),
     r"cascade.aug_level=60 is outside the levels \[0, 50\]"),
    (dict(data=dict(low_resolution=14), cascade=dict(augmentation="blur", blur_kernel=4)), "odd integer"),
    (dict(data=dict(low_resolution=14), cascade=dict(augmentation="blur", blur_fraction=0.0)), "share of training"),
    (dict(data=dict(low_resolution=14), cascade=dict(augmentation="blur", aug_level=5)), "levels of Gaussian"),
    (dict(data=dict(low_resolution=14), cascade=dict(augmentation="noise")), "cascade.augmentation='noise'"),
])
def test_a_super_resolution_config_that_cannot_run_is_refused(fields, message):
    c = base.get_config()
    for section, values in fields.items():
        c[section].update(values)
    with pytest.raises(ValueError, match=message):
        build.validate(c)


def test_the_cascaded_study_plans_valid_stages_and_reads_its_table():
    module = plan.load_study("cascaded")
    for scale in ("default", "paper"):
        study_plan = plan.make_plan(module, "runs/studies/cascaded", scale=scale)
        for job in study_plan.models.values():
            build.validate(job.config)
        assert study_plan.data_config.data.image_size == 28
    names = [plan.cell_name(c) for c in study_plan.cells]
    assert len(set(names)) == len(names)
    assert any("--cascade runs/studies/cascaded/models/base,runs/studies/cascaded/models/sr_gaussian --aug_level 100 "
               "--truncated" in c for c in study_plan.commands)
    good = {"Gaussian augmentation, on held-out": 3.0, "no augmentation": 30.0, "blur": 12.0, "one 28×28": 25.0}
    fid = lambda c: next((v for k, v in good.items() if c["row"].startswith(k)),
                         10.0 + abs(c["aug_level"] - 100) / 20 + 2 * c["truncated"])
    results = [dict(c, fid=fid(c), fid_se=0.1) for c in study_plan.cells]
    assert [held for _, held, _ in module.claims(results, {})] == [True, True, True, False, True]
    said = module.findings(results)
    assert "the base's samples, not the super-resolution stage, limit the cascade" in said[0]
    assert "beats the single 28×28 model" in said[2] and len(said) == 4


def test_the_cascaded_studys_single_model_trains_on_the_cascades_compute():
    """CASCADE_FLOPS, the single model's extra steps, is the base's and a stage's forward FLOPs per
    example over the single model's, recounted by XLA's cost analysis (a training step is a fixed
    multiple of its forward pass)."""
    from configs.studies import cascaded
    from diffusion.models.cost import model_cost
    study_plan = plan.make_plan(cascaded, "runs/studies/cascaded")
    flops = {}
    for name in ("base", "sr_gaussian", "single"):
        c = study_plan.models[name].config
        model = build.make_model(c)
        params = jax.eval_shape(lambda k: build.init_params(model, c, k), jax.random.key(0))
        call = (augmentation.conditioning(jnp.zeros((8, 14, 14, 1)), 28, 0) if c.data.low_resolution else {})
        flops[name] = model_cost(model, params, (c.data.image_size,) * 2 + (1,), **call)["flops_per_example"]
    assert (flops["base"] + flops["sr_gaussian"]) / flops["single"] == pytest.approx(cascaded.CASCADE_FLOPS, rel=0.01)
    single, stage = study_plan.models["single"].config.train, study_plan.models["sr_gaussian"].config.train
    assert single.batch_size == stage.batch_size and single.num_steps == round(cascaded.CASCADE_FLOPS * stage.num_steps)
