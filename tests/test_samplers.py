"""Samplers, inversion and guidance driven by exact (oracle) denoisers for Gaussian data, float64."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import guidance, oracle, samplers, schedules

MEAN = jnp.array([1.0, -0.5])
COV = jnp.array([[0.5, 0.2], [0.2, 0.3]])
N = 8000


@pytest.fixture
def setup(x64):
    sched = schedules.make_schedule("linear", 1000)
    x_T = jax.random.normal(jax.random.key(0), (N, 2))
    return sched, oracle.gaussian_eps(sched, MEAN, COV), x_T


def assert_moments(x, mean, cov, slack=0.0):
    """Sample mean and covariance agree within 4 standard errors (+ ``slack`` relative on the covariance)."""
    x = np.asarray(x)
    n = len(x)
    cov = np.asarray(cov)
    se_mean = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4 * se_mean + 0.01)
    se_cov = np.sqrt((cov ** 2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 4 * se_cov + slack * np.abs(cov))


def test_ddpm_1000_steps_recovers_the_data(setup):
    sched, model, x_T = setup
    x = jax.jit(partial(samplers.sample, samplers.ddpm_step, model))(sched, x_T, jax.random.key(1))
    assert_moments(x, MEAN, COV)


def test_ddpm_on_a_respaced_schedule_needs_the_right_variance(setup):
    """On 100 of 1000 steps the exact reverse variance recovers the data; fixed β̃ shrinks it
    (the reason Nichol & Dhariwal learn Σ_θ for strided sampling)."""
    sched, _, x_T = setup
    var = jnp.array([0.5, 0.3])
    short = schedules.respace(sched, schedules.space_timesteps(1000, 100))
    exact = oracle.gaussian_reverse(short, MEAN, var)
    x = samplers.sample(partial(samplers.ddpm_step, variance="learned"), exact, short, x_T, jax.random.key(1))
    assert_moments(x, MEAN, jnp.diag(var))
    small = samplers.sample(samplers.ddpm_step, oracle.gaussian_eps(short, MEAN, jnp.diag(var)), short,
                            x_T, jax.random.key(1))
    assert np.all(np.var(np.asarray(small), 0) < 0.95 * np.asarray(var))


def test_ddim_is_the_exact_push_forward_and_converges(setup):
    """With a linear oracle, η = 0 DDIM is an affine map x_T ↦ A x_T + b, so its output law is
    N(b, AAᵀ): the sampled moments must match that, and AAᵀ → Σ as the step count grows."""
    sched, model, x_T = setup
    errors = []
    for S in (20, 50, 200, 1000):
        ts = samplers.spaced(sched, S)
        run = lambda z: samplers.sample(samplers.ddim_step, model, sched, z, jax.random.key(0), timesteps=ts)
        b = run(jnp.zeros((1, 2)))[0]
        A = jax.jacfwd(lambda z: run(z[None])[0])(jnp.zeros(2))
        errors.append(float(jnp.abs(A @ A.T - COV).max()))
        if S == 50:
            assert_moments(run(x_T), b, A @ A.T)
            assert_moments(run(x_T), MEAN, COV, slack=0.10)   # 50 steps shrink the covariance by < 10%
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.005


def test_annealed_langevin_recovers_the_data(setup):
    sched, model, x_T = setup
    short = schedules.respace(sched, schedules.space_timesteps(1000, 100))
    step = partial(samplers.langevin_step, n_steps=20, snr=0.16)
    x = jax.jit(partial(samplers.sample, step, model))(short, x_T, jax.random.key(2))
    assert_moments(x, MEAN, COV, slack=0.05)
    pc = jax.jit(partial(samplers.sample, samplers.predictor_corrector_step, model))(sched, x_T, jax.random.key(3))
    assert_moments(pc, MEAN, COV, slack=0.05)


def test_ddim_eta_one_is_the_ddpm_step(setup):
    sched, model, x_T = setup
    key = jax.random.key(4)
    for t in (999, 500, 1):
        ddpm, _ = samplers.ddpm_step(model, sched, x_T[:16], t, t - 1, key)
        ddim, _ = samplers.ddim_step(model, sched, x_T[:16], t, t - 1, key, eta=1.0)
        np.testing.assert_allclose(ddim, ddpm, rtol=1e-9, atol=1e-12)


def test_inversion_then_sampling_reconstructs(setup):
    sched, model, _ = setup
    x0 = jax.random.multivariate_normal(jax.random.key(5), MEAN, COV, (16,))
    decode = lambda z, ts: samplers.sample(samplers.ddim_step, model, sched, z, jax.random.key(0), timesteps=ts)
    ts = samplers.spaced(sched, 50)
    exact = samplers.ddim_invert(model, sched, x0, timesteps=ts[::-1], fixed_point_iters=10)
    assert float(jnp.abs(decode(exact, ts) - x0).max()) < 1e-3
    # The latent is (close to) a standard normal draw: DDIM encodes data as noise.
    assert 0.5 < float(jnp.std(exact)) < 1.5
    # Classic one-pass inversion is only first-order accurate: its error shrinks with the step count.
    errs = [float(jnp.abs(decode(samplers.ddim_invert(model, sched, x0, timesteps=ts[::-1]), ts) - x0).max())
            for ts in (samplers.spaced(sched, 50), samplers.spaced(sched, 200))]
    assert errs[1] < errs[0] / 2


def test_slerp():
    z0, z1 = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0]])
    np.testing.assert_allclose(samplers.slerp(z0, z1, 0.0), z0, atol=1e-6)
    np.testing.assert_allclose(samplers.slerp(z0, z1, 1.0), z1, atol=1e-6)
    mid = samplers.slerp(z0, z1, 0.5)
    np.testing.assert_allclose(mid, [[np.sqrt(0.5), 2 * np.sqrt(0.5)]], atol=1e-6)


def test_trajectory_frames(setup):
    sched, model, x_T = setup
    final, traj = samplers.sample(samplers.ddim_step, model, sched, x_T[:4], jax.random.key(0),
                                  timesteps=samplers.spaced(sched, 10), keep_every=3)
    assert traj["x_t"].shape == (5, 4, 2) and traj["x0"].shape == (5, 4, 2)
    np.testing.assert_allclose(traj["x_t"][0], x_T[:4])
    np.testing.assert_allclose(traj["x_t"][-1], final)


def test_classifier_free_guidance_shifts_by_the_closed_form(setup):
    """Conditional N(μ_c, Σ) and unconditional N(μ_u, Σ): the guided score is exactly that of
    N((1+w)μ_c − wμ_u, Σ) at every t, so guided samples must have that mean."""
    sched, _, x_T = setup
    mu_c, mu_u = jnp.array([1.0, 0.0]), jnp.array([0.0, 0.5])
    cond, uncond = oracle.gaussian_eps(sched, mu_c, COV), oracle.gaussian_eps(sched, mu_u, COV)
    model = lambda x, ts, labels: jnp.where((labels == 1)[:, None], uncond(x, ts), cond(x, ts))
    guided = guidance.classifier_free(model, null_label=1)
    run = jax.jit(partial(samplers.sample, samplers.ddpm_step, guided))
    labels = jnp.zeros((N // 2,), jnp.int32)
    for w in (0.0, 2.0):
        x = run(sched, x_T[: N // 2], jax.random.key(6), cond={"labels": labels, "guidance_scale": w})
        assert_moments(x, (1 + w) * mu_c - w * mu_u, COV)


def test_classifier_guidance_with_the_exact_classifier(setup):
    """For a two-component mixture, ∇log p_t(x) + ∇log p_t(y|x) = ∇log p_t(x|y): scale 1 samples the class."""
    sched, _, x_T = setup
    means, covs = [jnp.array([-1.5, 0.0]), jnp.array([1.5, 0.5])], [COV, 0.5 * COV]
    model = oracle.mixture_eps(sched, means, covs, [0.5, 0.5])
    log_post = oracle.mixture_log_posterior(sched, means, covs, [0.5, 0.5])
    log_prob = lambda x, ts, labels: jnp.take_along_axis(log_post(x, ts), labels[:, None], 1)[:, 0]
    guided = guidance.classifier(model, log_prob, sched)
    labels = jnp.ones((N // 2,), jnp.int32)
    run = jax.jit(partial(samplers.sample, samplers.ddpm_step, guided))
    x1 = run(sched, x_T[: N // 2], jax.random.key(7), cond={"labels": labels, "guidance_scale": 1.0})
    assert_moments(x1, means[1], covs[1], slack=0.03)
    x3 = run(sched, x_T[: N // 2], jax.random.key(7), cond={"labels": labels, "guidance_scale": 3.0})
    assert float(x3[:, 0].mean()) > float(x1[:, 0].mean())   # stronger guidance pushes further from class 0
    assert float(jnp.var(x3[:, 0])) < float(jnp.var(x1[:, 0]))


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "dpm_solver_3", "heun", "euler_ancestral"])
def test_sampler_compiles_once_across_keys_and_scales(name):
    """One compilation per shape: the first call traces the step's network calls (Heun's and
    DPM-Solver's stages and branches among them), later keys and guidance scales trace nothing."""
    sched = schedules.make_schedule("linear", 20)
    traces = []

    def model(x, ts, labels):
        traces.append(1)
        return 0.1 * x + 0.01 * labels[:, None]

    guided = guidance.classifier_free(model, null_label=3)
    step, run_on, ts = samplers.plan(name, sched, 5)
    run = jax.jit(partial(samplers.sample, step, guided))
    x_T = jnp.ones((4, 2))
    counts = []
    for i, w in enumerate((0.0, 1.0, 4.5)):
        run(run_on, x_T, jax.random.key(i), timesteps=ts,
            cond={"labels": jnp.zeros(4, jnp.int32), "guidance_scale": jnp.float32(w)})
        counts.append(len(traces))
    assert counts[0] >= samplers.SAMPLERS[name].stages and counts == [counts[0]] * 3


def test_plan_respaces_one_index_steps_and_jumps_the_others():
    sched = schedules.make_schedule("linear", 1000)
    step, run_on, ts = samplers.plan("ddpm", sched, 50, eta=0.7, clip="static", prediction="eps")
    assert run_on.num_steps == 50 and list(np.asarray(ts)) == list(range(49, -1, -1))
    kept = schedules.space_timesteps(1000, 50)           # the respaced ᾱ are the kept steps' ᾱ
    np.testing.assert_allclose(run_on.alphas_cumprod, sched.alphas_cumprod[kept], rtol=1e-6)
    assert "eta" not in step.keywords and step.keywords["clip"] == "static"    # DDPM takes no η
    step, run_on, ts = samplers.plan("ddim", sched, 50, eta=0.7)
    assert run_on is sched and step.keywords == {"eta": 0.7}
    np.testing.assert_array_equal(ts, kept[::-1])
    _, run_on, ts = samplers.plan("pc", sched, 1000)
    assert run_on is sched and len(ts) == 1000
    assert {"ddpm", "ddim", "langevin", "pc", "dpmpp_2m", "heun", "euler_ancestral"} <= set(samplers.SAMPLERS)
    _, run_on, ts = samplers.plan("ddim", sched, 10, spacing="trailing")      # a spacing overrides the sampler's
    assert run_on is sched and list(np.asarray(ts)) == list(range(999, 0, -100))
    _, run_on, ts = samplers.plan("ddpm", sched, 10, spacing="trailing")
    np.testing.assert_allclose(run_on.alphas_cumprod, sched.alphas_cumprod[99::100], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown spacing 'middle'"):
        samplers.plan("ddim", sched, 10, spacing="middle")
    for S in (10, 200, 1000):                      # DPM-Solver's λ grid: distinct indices from T − 1 to 0
        _, run_on, ts = samplers.plan("dpmpp_2m", sched, S)
        ts = np.asarray(ts)
        assert run_on is sched and len(ts) == S and ts[0] == 999 and ts[-1] == 0 and (np.diff(ts) < 0).all()
    zero_snr = schedules.make_schedule("linear", 1000, zero_terminal=True)   # λ_{T−1} = −∞, σ_{T−1} = ∞
    for name in ("dpmpp_2m", "heun"):                 # their λ and σ grids start at the last finite level
        ts = np.asarray(samplers.plan(name, zero_snr, 10)[2])
        assert ts[0] == 998 and ts[-1] == 0 and (np.diff(ts) < 0).all()
    for name, steps, message in [("ddim", 0, "must be an integer >= 1"), ("ddpm", 1001, "exceeds the schedule's T"),
                                 ("ddim", 2.0, "must be an integer"), ("unipc", 10, "unknown sampler 'unipc'")]:
        with pytest.raises(ValueError, match=message):
            samplers.plan(name, sched, steps)


def exact_flow(sched, x_T, t_from):
    """The probability-flow ODE's map from level ``t_from`` to data for x_0 ~ N(MEAN, COV): the
    marginal covariances C_t = ᾱ_t·Σ + (1 − ᾱ_t)·I commute, so x_0 − μ = Σ^½·C_t^{−½}·(x_t − √ᾱ_t·μ)."""
    a = sched.alphas_cumprod[t_from]
    s, V = jnp.linalg.eigh(COV)
    M = V @ jnp.diag(jnp.sqrt(s / (a * s + 1 - a))) @ V.T
    return MEAN + (x_T - jnp.sqrt(a) * MEAN) @ M.T


def test_dpm_solver_pp_2m_converges_to_the_ode_at_second_order(setup):
    """Against the exact ODE map: DPM-Solver++(2M) (Lu et al. 2022) is far closer than DDIM at the
    same steps, and halving its step size cuts the error ~4× (second order; DDIM ~2×)."""
    sched, model, x_T = setup
    x_T = x_T[:1000]
    errors = {}
    for name in ("ddim", "dpmpp_2m"):
        for S in (10, 20, 40):
            step, run_on, ts = samplers.plan(name, sched, S)
            x = jax.jit(partial(samplers.sample, step, model))(run_on, x_T, jax.random.key(0), timesteps=ts)
            errors[name, S] = float(jnp.abs(x - exact_flow(sched, x_T, int(ts[0]))).max())
    for S in (10, 20, 40):
        assert errors["dpmpp_2m", S] < errors["ddim", S] / 4, errors
    assert errors["dpmpp_2m", 20] / errors["dpmpp_2m", 40] > 3, errors      # second order
    assert errors["ddim", 20] / errors["ddim", 40] < 2.5, errors            # first order
    # The multistep memory also rides through the trajectory variant of the loop.
    step, run_on, ts = samplers.plan("dpmpp_2m", sched, 20)
    final, frames = samplers.sample(step, model, run_on, x_T, jax.random.key(0), timesteps=ts, keep_every=5)
    np.testing.assert_allclose(final, exact_flow(sched, x_T, int(ts[0])), atol=errors["dpmpp_2m", 20] * 1.01)


def log_log_slope(steps, errors):
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def test_heun_converges_to_the_ode_at_second_order_on_the_karras_grid(setup):
    """Heun in σ (Karras et al. 2022, Algorithm 2) against the exact ODE map: error ∝ N^{-2}
    (log–log slope −2 ± 0.5), where Euler in σ on the same grid — DDIM with η = 0 — is ∝ N^{-1}."""
    sched, model, x_T = setup
    x_T = x_T[:1000]
    steps, errors = (10, 20, 40, 80), {"heun": [], "ddim": []}
    for S in steps:
        _, _, ts = samplers.plan("heun", sched, S)
        exact = exact_flow(sched, x_T, int(ts[0]))
        for name in errors:
            step = samplers.plan(name, sched, S)[0]
            x = jax.jit(partial(samplers.sample, step, model))(sched, x_T, jax.random.key(0), timesteps=ts)
            errors[name].append(float(jnp.abs(x - exact).max()))
    assert -2.5 < log_log_slope(steps, errors["heun"]) < -1.5, errors
    assert -1.3 < log_log_slope(steps, errors["ddim"]) < -0.7, errors
    assert all(h < e for h, e in zip(errors["heun"], errors["ddim"])), errors


@pytest.mark.parametrize("name, steps, settings", [("euler_ancestral", 400, {}), ("heun", 100, {"churn": 0.2})])
def test_the_stochastic_karras_samplers_recover_the_data(setup, name, steps, settings):
    """Euler ancestral and EDM's stochastic Heun (churn γ = 0.2, noise added then the index nearest
    σ̂ used) sample the data distribution: moments within Monte Carlo error (+5% on the covariance).
    Euler ancestral is first order in law: at 100 steps it still shrinks Σ by ~14% (measured), so
    it gets 400."""
    sched, model, x_T = setup
    step, run_on, ts = samplers.plan(name, sched, steps, **settings)
    x = jax.jit(partial(samplers.sample, step, model))(run_on, x_T, jax.random.key(3), timesteps=ts)
    assert_moments(x, MEAN, COV, slack=0.05)


def exact_flow_between(sched, x, t_from, t_to):
    """The probability-flow ODE's exact map from level ``t_from`` to level ``t_to`` ≥ 0 for
    x_0 ~ N(MEAN, COV): x_to − √ᾱ_to·μ = C_to^½·C_from^{−½}·(x − √ᾱ_from·μ)."""
    a, b = sched.alphas_cumprod[t_from], sched.alphas_cumprod[t_to]
    s, V = jnp.linalg.eigh(COV)
    M = V @ jnp.diag(jnp.sqrt((b * s + 1 - b) / (a * s + 1 - a))) @ V.T
    return jnp.sqrt(b) * MEAN + (x - jnp.sqrt(a) * MEAN) @ M.T


def test_singlestep_dpm_solvers_converge_at_their_orders(setup):
    """DPM-Solver-1/2/3 (Lu et al. 2022) on λ-uniform steps between levels 999 and 100 of the
    linear schedule, against the exact ODE map then the same final x̂_0: log–log slopes of error
    against steps ≈ −1, −2, −3 (± 0.5), the intermediate points being the schedule indices nearest
    their λ targets (at 96 steps, ~6 indices a step, order 3 flattens: see ``dpm_solver_step``)."""
    sched, model, x_T = setup
    x_T = x_T[:500]
    steps = (6, 12, 24, 48)
    errors = {k: [] for k in (1, 2, 3)}
    lam = 0.5 * np.log(np.asarray(sched.snr))
    for S in steps:
        ts = jnp.asarray(np.abs(lam[None] - np.linspace(lam[999], lam[100], S)[:, None]).argmin(1), jnp.int32)
        at_100 = exact_flow_between(sched, x_T, 999, 100)
        exact = samplers.sample(samplers.ddim_step, model, sched, at_100, jax.random.key(0),
                                timesteps=jnp.array([100]))        # the shared last step: x̂_0 at 100
        for k in errors:
            x = jax.jit(partial(samplers.sample, samplers.SAMPLERS[f"dpm_solver_{k}"].step, model))(
                sched, x_T, jax.random.key(0), timesteps=ts)
            errors[k].append(float(jnp.abs(x - exact).max()))
    for k in errors:
        assert -k - 0.5 < log_log_slope(steps, errors[k]) < -k + 0.5, errors


def test_dpm_solver_3_on_its_logsnr_grid_beats_ddim_at_equal_evaluations(setup):
    """On the plan's own λ grid to clean data, DPM-Solver-3 at 10 and 19 network evaluations is
    closer to the exact ODE map than DDIM at the same count; the count is ``network_evaluations``."""
    sched, model, x_T = setup
    x_T = x_T[:500]
    for nfe in (10, 19):
        errors = {}
        for name in ("ddim", "dpm_solver_3"):
            S = samplers.steps_within(name, sched, nfe)
            assert samplers.network_evaluations(name, sched, S) == nfe
            step, run_on, ts = samplers.plan(name, sched, S)
            x = jax.jit(partial(samplers.sample, step, model))(run_on, x_T, jax.random.key(0), timesteps=ts)
            errors[name] = float(jnp.abs(x - exact_flow(sched, x_T, int(ts[0]))).max())
        assert errors["dpm_solver_3"] < errors["ddim"] / 3, errors


def test_network_evaluations_and_the_solvers_refusals():
    sched = schedules.make_schedule("linear", 100)
    # DPM-Solver-3's last λ step before the final one spans 2 of T = 100 indices: 2 stages, not 3.
    assert [samplers.network_evaluations(n, sched, 10) for n in ("ddim", "heun", "dpm_solver_2", "dpm_solver_3")] \
        == [10, 19, 19, 27]
    assert samplers.network_evaluations("pc", sched, 10, n_steps=2) == 30
    assert samplers.network_evaluations("langevin", sched, 2) == 22
    assert samplers.steps_within("heun", sched, 10) == 5 and samplers.steps_within("dpm_solver_3", sched, 10) == 4
    assert samplers.steps_within("ddim", sched, 500) == 100                 # never more steps than T
    with pytest.raises(ValueError, match="3 network evaluations are fewer than 'dpm_solver_3' needs for 2 step"):
        samplers.steps_within("dpm_solver_3", sched, 3)
    with pytest.raises(ValueError, match="'dpm_solver_3' needs at least 2 steps"):
        samplers.plan("dpm_solver_3", sched, 1)
    with pytest.raises(ValueError, match="order=4 does not exist"):
        samplers.sample(partial(samplers.SAMPLERS["dpm_solver_3"].step, order=4), lambda x, t: x, sched,
                        jnp.zeros((1, 2)), jax.random.key(0))


@pytest.mark.parametrize("name, steps", [("dpm_solver_3", 40), ("dpm_solver_2", 60), ("heun", 12)])
def test_network_evaluations_are_the_calls_the_compiled_sampler_makes(name, steps):
    """Counted at run time inside the compiled loop (only a ``lax.switch``/``cond`` branch taken
    calls the network): where λ-uniform steps crowd the schedule's clean end, DPM-Solver steps span
    fewer indices than the order and take fewer stages, and the count follows the grid."""
    sched = schedules.make_schedule("linear", 1000)
    calls = []
    model = lambda x, ts: (jax.debug.callback(lambda: calls.append(1)), 0.1 * x)[1]
    step, run_on, ts = samplers.plan(name, sched, steps)
    jax.block_until_ready(jax.jit(partial(samplers.sample, step, model))(run_on, jnp.ones((2, 2)), jax.random.key(0),
                                                                          timesteps=ts))
    jax.effects_barrier()
    assert len(calls) == samplers.network_evaluations(name, sched, steps)
    if name.startswith("dpm_solver"):
        assert len(calls) < samplers.SAMPLERS[name].stages * (steps - 1) + 1      # some steps had no room


FAST_SOLVERS = ("dpmpp_2m", "dpm_solver_2", "dpm_solver_3", "heun", "euler_ancestral")


@pytest.mark.parametrize("name", FAST_SOLVERS)
def test_every_fast_solver_takes_every_prediction_threshold_and_guidance(setup, name):
    """Each solver through ``plan`` at 10 steps: x_0- and v-prediction of the exact model give the
    ε-prediction samples to round-off; static thresholding (and dynamic with its bound at 1, the
    same) keeps every sample in [−1, 1] though the data's mean lies at the edge; classifier-free
    guidance of the exact conditional Gaussians at w = 2 moves the samples' mean by the closed form's
    direction, w·(μ_c − μ_u), to within the solver's 10-step error."""
    sched, eps_model, x_T = setup
    x_T = x_T[:500]
    a = lambda ts: oracle.alphas_cumprod_at(sched, ts)[:, None]
    x0_of = lambda x, ts: (x - jnp.sqrt(1 - a(ts)) * eps_model(x, ts)) / jnp.sqrt(a(ts))
    models = {"eps": eps_model, "x0": x0_of,
              "v": lambda x, ts: jnp.sqrt(a(ts)) * eps_model(x, ts) - jnp.sqrt(1 - a(ts)) * x0_of(x, ts)}
    draw = lambda model, x_T, cond=None, **settings: _draw(name, sched, model, x_T, cond, settings)
    by_prediction = {p: draw(m, x_T, prediction=p) for p, m in models.items()}
    for p in ("x0", "v"):
        np.testing.assert_allclose(by_prediction[p], by_prediction["eps"], atol=1e-8)
    static = draw(eps_model, x_T, clip="static")
    assert float(jnp.abs(static).max()) <= 1.0 and float(jnp.abs(by_prediction["eps"]).max()) > 1.0
    np.testing.assert_allclose(draw(eps_model, x_T, clip="dynamic", clip_max=1.0), static, atol=1e-12)
    mu_c, mu_u = jnp.array([1.0, 0.0]), jnp.array([0.0, 0.5])
    cond_model, uncond_model = oracle.gaussian_eps(sched, mu_c, COV), oracle.gaussian_eps(sched, mu_u, COV)
    model = lambda x, ts, labels: jnp.where((labels == 1)[:, None], uncond_model(x, ts), cond_model(x, ts))
    guided = guidance.classifier_free(model, null_label=1)
    labels = jnp.zeros((500,), jnp.int32)
    means = [np.asarray(draw(guided, x_T, {"labels": labels, "guidance_scale": w})).mean(0) for w in (0.0, 2.0)]
    np.testing.assert_allclose(means[1] - means[0], 2.0 * (mu_c - mu_u), atol=0.1)


def _draw(name, sched, model, x_T, cond, settings):
    step, run_on, ts = samplers.plan(name, sched, 10, **settings)
    return jax.jit(partial(samplers.sample, step, model))(run_on, x_T, jax.random.key(4), timesteps=ts, cond=cond)
