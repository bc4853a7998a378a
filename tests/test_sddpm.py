"""Seed 004's SDDPM against closed forms for Gaussian data (float64): the forward pair, the loss's
minimiser E[x_{t−1} | x_t], the residual sampler's marginals; its autoencoders and its refusals."""
import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from configs.sddpm import conv_autoencoder, dense_autoencoder, shallow_autoencoder
from diffusion import gaussian, losses, oracle, parallel, samplers, schedules
from diffusion.sddpm import process
from diffusion.sddpm.autoencoders import ConvAutoencoder, DenseAutoencoder, ShallowAutoencoder
from experiments import build, inference, loop
from experiments.sddpm import diagnostics

MEAN, VAR = np.array([0.5, -1.0]), np.array([0.3, 2.0])     # x_0 ~ N(MEAN, diag VAR)


@pytest.fixture
def sched(x64):
    return schedules.make_schedule("constant", 50)           # seed 004: β = 0.2, T = 50


def reverse_moments(schedule, t):
    """E[x_{t−1} | x_t] = slope·x_t + intercept and Var[x_{t−1} | x_t] for x_0 ~ N(MEAN, diag VAR), derived
    from the joint Gaussian of (x_{t−1}, x_t): Var x_{t−1} = s_prev, Cov = √α_t·s_prev, Var x_t = s_t."""
    ab = np.asarray(schedule.alphas_cumprod)
    a_t, a_prev = ab[t], (ab[t - 1] if t > 0 else 1.0)
    alpha, beta = float(schedule.alphas[t]), float(schedule.betas[t])
    s_prev, s_t = a_prev * VAR + 1 - a_prev, a_t * VAR + 1 - a_t
    slope = np.sqrt(alpha) * s_prev / s_t
    return slope, np.sqrt(a_prev) * MEAN - slope * np.sqrt(a_t) * MEAN, s_prev * beta / s_t, s_t


def exact_residual(schedule):
    """The exact SDDPM network for the Gaussian data: [E[x_{t−1} | x_t] − x_t, log Var[x_{t−1} | x_t]]."""
    moments = [reverse_moments(schedule, t) for t in range(schedule.num_steps)]
    slope, intercept, var = (jnp.asarray(np.stack(m)) for m in list(zip(*moments))[:3])

    def model_fn(x_t, timesteps, **_):
        mean = slope[timesteps] * x_t + intercept[timesteps]
        return jnp.concatenate([mean - x_t, jnp.log(var[timesteps])], -1)
    return model_fn


def test_the_forward_pair_composes_to_the_seeds_two_step_closed_form(sched):
    """x_t = √α_t(√ᾱ_{t−1}x_0 + √(1−ᾱ_{t−1})ε) + √β_t z: the x_0 coefficient is √ᾱ_t and the noise
    variances add to 1 − ᾱ_t, the seed's q(x_{t+1} | x_{t−1}) merged over every earlier step."""
    t = jnp.array([0, 1, 7, 49])
    one, zero = jnp.ones((4, 1)), jnp.zeros((4, 1))
    coef_x0 = process.forward_pair(sched, one, t, zero, zero)[1][:, 0]
    coef_eps = process.forward_pair(sched, zero, t, one, zero)[1][:, 0]
    coef_z = process.forward_pair(sched, zero, t, zero, one)[1][:, 0]
    np.testing.assert_allclose(coef_x0, sched.sqrt_alphas_cumprod[t], rtol=1e-12)
    np.testing.assert_allclose(coef_eps ** 2 + coef_z ** 2, 1 - sched.alphas_cumprod[t], rtol=1e-12)
    np.testing.assert_allclose(coef_z ** 2, sched.betas[t], rtol=1e-12)
    x_prev = process.forward_pair(sched, one, t, one, zero)[0][:, 0]      # x_{t−1} is x_0 itself at t = 0
    np.testing.assert_allclose(x_prev[0], 1.0, rtol=1e-12)


@pytest.mark.parametrize("t", [0, 1, 10, 49])
def test_the_sddpm_loss_is_minimised_by_the_reverse_conditional_mean_and_variance(sched, t):
    """A linear residual a·x_t + b with a learned log-variance c, fitted by Newton's method to the
    loss on 200,000 forward pairs, lands on E[x_{t−1} | x_t] and log Var[x_{t−1} | x_t] within 5 s.e.
    (The loss is quadratic in a, b, whose optimum does not depend on c: one step; then convex in c.)"""
    n, D = 200_000, 2
    k0, k1, k2 = jax.random.split(jax.random.key(t), 3)
    x0 = MEAN + np.sqrt(VAR) * jax.random.normal(k0, (n, D))
    noise, step_noise = jax.random.normal(k1, (n, D)), jax.random.normal(k2, (n, D))
    ts = jnp.full((n,), t)

    def mean_loss(theta):
        a, b, c = theta.reshape(3, D)
        model_fn = lambda x, _: jnp.concatenate([a * x + b, jnp.broadcast_to(c, x.shape)], -1)
        terms = losses.training_losses(model_fn, sched, x0, ts, noise, loss="sddpm", prediction="residual",
                                       variance="learned", step_noise=step_noise)
        return jnp.mean(terms["loss"])

    theta = jnp.concatenate([jnp.zeros(2 * D), jnp.log(jnp.full(D, 0.2))])
    grad, hess = jax.jit(jax.grad(mean_loss)), jax.jit(jax.hessian(mean_loss))
    for block in [slice(0, 2 * D)] + [slice(2 * D, 3 * D)] * 20:
        theta = theta.at[block].add(-jnp.linalg.solve(hess(theta)[block, block], grad(theta)[block]))
    a, b, c = np.asarray(theta).reshape(3, D)
    slope, intercept, var, s_t = reverse_moments(sched, t)
    centre = np.sqrt(float(sched.alphas_cumprod[t])) * MEAN      # E[x_t]
    np.testing.assert_array_less(np.abs(1 + a - slope), 5 * np.sqrt(var / (n * s_t)))
    np.testing.assert_array_less(np.abs(b - intercept), 5 * np.sqrt(var / n * (1 + centre ** 2 / s_t)))
    np.testing.assert_array_less(np.abs(c - np.log(var)), 5 * np.sqrt(2 / n))


def test_the_closed_form_is_the_oracles_and_ho_et_als_optimum_is_the_same_step(sched):
    """E[x_{t−1} | x_t] = μ̃(E[x_0 | x_t], x_t) and Var = oracle.gaussian_reverse's, so the SDDPM and Ho
    et al.'s losses share their optimum; Tweedie's x0_from_mean recovers the oracle's E[x_0 | x_t]."""
    t = jnp.arange(50)
    x_t = jnp.asarray(np.random.default_rng(0).normal(size=(50, 2)) * 1.5)
    residual_out = exact_residual(sched)(x_t, t)
    mean, log_var = process.reverse_step(sched, residual_out, x_t, t, variance="learned")
    ho_out = oracle.gaussian_reverse(sched, jnp.asarray(MEAN), jnp.asarray(VAR))(x_t, t)
    ho_mean, ho_log_var = process.reverse_step(sched, ho_out, x_t, t, prediction="eps", variance="learned")
    np.testing.assert_allclose(mean, ho_mean, atol=1e-10)
    np.testing.assert_allclose(log_var, ho_log_var, atol=1e-10)
    x0 = gaussian.x0_from_eps(sched, x_t, t, ho_out[:, :2])
    np.testing.assert_allclose(process.x0_from_mean(sched, x_t, t, mean), x0, atol=1e-9)
    # The held-out objective reads either parameterisation: the same q_r gives the same value.
    x0_data = jnp.asarray(MEAN + np.sqrt(VAR) * np.random.default_rng(1).normal(size=(64, 2)))
    objective = partial(losses.sddpm_objective, schedule=sched, x0=x0_data, key=jax.random.key(0), variance="learned")
    exact = exact_residual(sched)
    ours = objective(exact)
    theirs = objective(oracle.gaussian_reverse(sched, jnp.asarray(MEAN), jnp.asarray(VAR)), prediction="eps")
    assert ours["terms"].shape == (64, 50)
    np.testing.assert_allclose(ours["total"], theirs["total"], rtol=1e-9)
    worse = objective(lambda x, ts: exact(x, ts) + jnp.array([0.1, 0.1, 0.0, 0.0]))
    assert float(jnp.mean(worse["total"])) > float(jnp.mean(ours["total"])) + 0.1


def test_the_residual_sampler_with_the_exact_model_reproduces_every_marginal(sched):
    """From x_T ~ q(x_T), ancestral steps of the exact q_r leave x at level t distributed as
    q(x_t) = N(√ᾱ_t·μ, ᾱ_t·v + 1 − ᾱ_t) at every level, and end (no noise at t = 0) at E[x_0 | x_1],
    whose variance is v − Var[x_0 | x_1]; its x̂_0 is the oracle's."""
    n = 50_000
    step, run_schedule, timesteps = samplers.plan("sddpm", sched, 50, variance="learned")
    a_T = float(sched.alphas_cumprod[-1])
    x_T = np.sqrt(a_T) * MEAN + np.sqrt(a_T * VAR + 1 - a_T) * jax.random.normal(jax.random.key(1), (n, 2))
    final, traj = jax.jit(partial(samplers.sample, step, exact_residual(sched), keep_every=1))(
        run_schedule, x_T, jax.random.key(2), timesteps=timesteps)
    for frame, t in enumerate(np.asarray(timesteps)):
        a = float(sched.alphas_cumprod[t])
        mean, var = np.sqrt(a) * MEAN, a * VAR + 1 - a
        x = np.asarray(traj["x_t"][frame])
        np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(var / n))
        np.testing.assert_array_less(np.abs(x.var(0) - var), 5 * var * np.sqrt(2 / n))
    var_final = VAR - reverse_moments(sched, 0)[2]
    np.testing.assert_array_less(np.abs(np.mean(final, 0) - MEAN), 5 * np.sqrt(var_final / n))
    np.testing.assert_array_less(np.abs(np.var(final, 0) - var_final), 5 * var_final * np.sqrt(2 / n))
    np.testing.assert_allclose(traj["x0"][-1], final)
    t_mid = 20
    frame = int(np.flatnonzero(np.asarray(timesteps) == t_mid)[0])
    eps = oracle.gaussian_eps(sched, jnp.asarray(MEAN), jnp.diag(jnp.asarray(VAR)))(traj["x_t"][frame][:100], jnp.full((100,), t_mid))
    np.testing.assert_allclose(traj["x0"][frame][:100],
                               gaussian.x0_from_eps(sched, traj["x_t"][frame][:100], jnp.full((100,), t_mid), eps), atol=1e-8)


@pytest.mark.parametrize("model", [
    ShallowAutoencoder(image_shape=(8, 8, 1), out_channels=2, code_width=5),
    DenseAutoencoder(image_shape=(8, 8, 1), out_channels=2, code_width=5, width=16),
    ConvAutoencoder(image_size=8, out_channels=2, code_width=5, features=(4, 8)),
])
def test_autoencoders_map_images_to_images_and_take_step_and_class(model):
    x, t = jax.random.normal(jax.random.key(0), (3, 8, 8, 1)), jnp.array([0, 4, 9])
    params = model.init(jax.random.key(1), x, t)
    out = model.apply(params, x, t)
    assert out.shape == (3, 8, 8, 2) and np.isfinite(out).all()
    assert not np.allclose(out, model.apply(params, x, t + 7))              # the step reaches the output
    blind = model.clone(step_embedding=False)
    p = blind.init(jax.random.key(1), x, t)
    np.testing.assert_array_equal(blind.apply(p, x, t), blind.apply(p, x, t + 7))
    labelled = model.clone(num_classes=3)
    p = labelled.init(jax.random.key(1), x, t, labels=jnp.zeros(3, jnp.int32))
    assert not np.allclose(labelled.apply(p, x, t, labels=jnp.zeros(3, jnp.int32)),
                           labelled.apply(p, x, t, labels=jnp.full(3, 3)))   # 3: the null label
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        labelled.apply(p, x, t)


def test_autoencoder_sizes_it_was_not_built_for_are_refused():
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros(2, jnp.int32)
    dense = DenseAutoencoder(image_shape=(8, 8, 1), code_width=5, width=16)
    params = dense.init(jax.random.key(0), x, t)
    assert dense.apply(params, x.reshape(2, 64), t).shape == (2, 64)          # a flat input of its size is fine
    for shallow_or_dense in (dense, ShallowAutoencoder(image_shape=(8, 8, 1), code_width=5)):
        with pytest.raises(ValueError, match=r"built for 8×8×1 inputs \(64 values\), not \(10, 10, 1\)"):
            shallow_or_dense.init(jax.random.key(0), jnp.zeros((2, 10, 10, 1)), t)
    with pytest.raises(ValueError, match=r"image_size 10 cannot be halved 2 times"):
        ConvAutoencoder(image_size=10)
    conv = ConvAutoencoder(image_size=8, features=(4, 8))
    with pytest.raises(ValueError, match=r"built for \[B, 8, 8, C\] images, not \(2, 64\)"):
        conv.init(jax.random.key(0), x.reshape(2, 64), t)


def sddpm_config(**diffusion):
    c = shallow_autoencoder.get_config()
    c.diffusion.update(diffusion)
    return c


@pytest.mark.parametrize("config, message", [
    (sddpm_config(variance="learned_range"), r"variance='learned_range' does not fit diffusion.loss='sddpm'.*use 'learned'"),
    (sddpm_config(loss="simple"), r"diffusion.prediction='residual' is the SDDPM's ε_r.*predict 'eps', 'x0' or 'v'"),
    (sddpm_config(prediction="eps"), r"sample.sampler='sddpm' reads the network as the SDDPM's residual.*'ddpm'"),
    (sddpm_config(weighting="min_snr"), r"weighting='min_snr' reweights L_simple's MSE"),
])
def test_impossible_sddpm_settings_are_refused_naming_the_fix(config, message):
    with pytest.raises(ValueError, match=message):
        build.validate(config)


def test_a_sampler_that_would_misread_the_residual_is_refused():
    c = shallow_autoencoder.get_config()
    schedule = build.make_schedule(c)
    with pytest.raises(ValueError, match=r"sampler='ddim' reads the network as ε, x_0 or v.*sample with 'sddpm'"):
        build.make_sampler(c, schedule, sampler="ddim", steps=50)
    with pytest.raises(ValueError, match=r"steps=10: the 'sddpm' sampler takes every one of the schedule's T = 50"):
        build.make_sampler(c, schedule, steps=10)
    c.sample.steps = 10
    with pytest.raises(ValueError, match=r"sample.steps=10: the 'sddpm' sampler"):
        build.validate(c)
    ho = base.get_config()
    with pytest.raises(ValueError, match=r"sampler='sddpm' reads the network as the SDDPM's residual"):
        build.make_sampler(ho, build.make_schedule(ho), sampler="sddpm", steps=1000)
    with pytest.raises(ValueError, match="pass step_noise"):
        losses.training_losses(lambda x, t: x, schedule, jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32),
                               jnp.zeros((2, 3)), loss="sddpm", prediction="residual", variance="fixed_large")


@pytest.mark.parametrize("config_module", [shallow_autoencoder, dense_autoencoder, conv_autoencoder])
@pytest.mark.system
def test_each_sddpm_config_trains_samples_and_encodes_then_decodes(tmp_path, config_module):
    """A few steps of each config, then seed 004's pictures: held-out images noised by k forward steps
    (k = 1: x_1 itself; k = T: nearly pure noise) and decoded by the trained residual sampler."""
    c = config_module.get_config()
    c.diffusion.num_steps = c.sample.steps = 5
    c.train.batch_size, c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 16, 2, 1, 2
    c.sample.num, c.optim.warmup_steps = 8, 1
    state = loop.train_and_evaluate(c, tmp_path)
    assert int(state.step) == 2
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) and np.isfinite(r["mse"]) for r in rows)
    assert (tmp_path / "samples" / "step_0000002.png").stat().st_size > 100
    run, mesh = inference.load_run(tmp_path), parallel.make_mesh()
    x0 = np.linspace(-1, 1, 8 * 28 * 28, dtype=np.float32).reshape(8, 28, 28, 1)
    encoded, decoded = diagnostics.forward_encode_decode(run, mesh, x0, np.zeros(8, np.int32), (1, 5), "sddpm")
    assert encoded.shape == decoded.shape == (2, 8, 28, 28, 1) and np.isfinite(decoded).all()
    a = float(run.schedule.alphas_cumprod[0])               # x_1 = √ᾱ_0·x_0 + √(1−ᾱ_0)·ε
    np.testing.assert_allclose(np.std(encoded[0] - np.sqrt(a) * x0), np.sqrt(1 - a), rtol=0.05)
    with pytest.raises(ValueError, match=r"encoding depths \(1, 6\) must lie in 1 … T = 5"):
        diagnostics.forward_encode_decode(run, mesh, x0, np.zeros(8, np.int32), (1, 6), "sddpm")
