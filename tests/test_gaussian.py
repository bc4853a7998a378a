"""Forward process, posterior and parameterisations against independent derivations (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import gaussian, reverse, schedules


@pytest.fixture
def sched(x64):
    return schedules.make_schedule("linear", 1000)


def test_q_sample_marginal_equals_iterated_forward_steps(sched):
    """Monte Carlo: T' single steps x_t = √(1−β_t)x_{t−1} + √β_t z give N(√ᾱ x0, 1−ᾱ)."""
    n, steps = 200_000, 300
    x0 = jnp.full((n, 1), 0.7)
    betas = sched.betas[:steps]

    def step(x, inp):
        beta, key = inp
        return jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * jax.random.normal(key, x.shape), None

    keys = jax.random.split(jax.random.key(0), steps)
    x = jax.lax.scan(step, x0, (betas, keys))[0]
    closed = gaussian.q_sample(sched, x0, jnp.full((n,), steps - 1), jax.random.normal(jax.random.key(1), x0.shape))
    mean, var, _ = gaussian.q_mean_variance(sched, x0[:1], jnp.array([steps - 1]))
    for sample in (x, closed):
        se_mean = np.sqrt(var[0, 0] / n)
        assert abs(sample.mean() - mean[0, 0]) < 5 * se_mean
        assert abs(sample.var() - var[0, 0]) < 5 * var[0, 0] * np.sqrt(2 / n)


def test_posterior_is_the_product_of_gaussians(sched):
    """q(x_{t−1}|x_t,x_0) ∝ q(x_t|x_{t−1}) q(x_{t−1}|x_0): precisions add, means weight by precision."""
    t = jnp.array([1, 10, 500, 999])
    x0, x_t = jnp.array([[0.3], [-1.0], [0.9], [0.1]]), jnp.array([[1.2], [0.4], [-0.7], [2.0]])
    b, ab = np.asarray(sched.betas)[t], np.asarray(sched.alphas_cumprod)
    ab_prev = ab[t - 1]
    precision = (1 - b) / b + 1 / (1 - ab_prev)
    mean = (np.sqrt(1 - b) / b * x_t[:, 0] + np.sqrt(ab_prev) / (1 - ab_prev) * x0[:, 0]) / precision
    m, v, logv = gaussian.q_posterior(sched, x0, x_t, t)
    np.testing.assert_allclose(m[:, 0], mean, rtol=1e-10)
    np.testing.assert_allclose(v[:, 0], 1 / precision, rtol=1e-10)
    np.testing.assert_allclose(logv[:, 0], np.log(1 / precision), rtol=1e-10)


def test_conversions_round_trip(sched):
    keys = jax.random.split(jax.random.key(0), 2)
    x0, eps = jax.random.normal(keys[0], (4, 3)), jax.random.normal(keys[1], (4, 3))
    t = jnp.array([0, 100, 600, 999])
    x_t = gaussian.q_sample(sched, x0, t, eps)
    np.testing.assert_allclose(gaussian.x0_from_eps(sched, x_t, t, eps), x0, atol=1e-9)
    np.testing.assert_allclose(gaussian.eps_from_x0(sched, x_t, t, x0), eps, atol=1e-9)
    v = gaussian.v_from_x0_eps(sched, x0, t, eps)
    np.testing.assert_allclose(gaussian.x0_from_v(sched, x_t, t, v), x0, atol=1e-9)
    np.testing.assert_allclose(gaussian.eps_from_v(sched, x_t, t, v), eps, atol=1e-9)
    for pred in gaussian.PREDICTIONS:
        out = gaussian.from_eps(sched, x_t, t, eps, pred)
        np.testing.assert_allclose(out, gaussian.target(sched, x0, t, eps, pred), atol=1e-9)
        np.testing.assert_allclose(gaussian.to_x0_eps(sched, x_t, t, out, pred)[1], eps, atol=1e-9)
    score = gaussian.score_from_eps(sched, t, eps)
    # The score of q(x_t|x_0) = N(√ᾱ x0, (1−ᾱ)I) is −(x_t − √ᾱ x0)/(1−ᾱ).
    ab = sched.alphas_cumprod[t][:, None]
    np.testing.assert_allclose(score, -(x_t - jnp.sqrt(ab) * x0) / (1 - ab), rtol=1e-9)
    np.testing.assert_allclose(gaussian.eps_from_score(sched, t, score), eps, atol=1e-9)


def test_seed_000_square_root_formulation_agrees(sched):
    """Seed 000 writes x_t = α_t x_{t−1} + β_t ε with α² + β² = 1 (square roots of the paper's)."""
    a, b = np.sqrt(1 - np.asarray(sched.betas)), np.sqrt(np.asarray(sched.betas))
    a_bar = np.cumprod(a)
    b_bar = np.sqrt(1 - a_bar ** 2)
    np.testing.assert_allclose(a_bar, sched.sqrt_alphas_cumprod, rtol=1e-12)
    np.testing.assert_allclose(b_bar, sched.sqrt_one_minus_alphas_cumprod, rtol=1e-12)
    # Expanding eq. (1): the noise coefficients' squares plus ā² sum to one (the merged-noise identity).
    t = 400
    coeffs = [b[i] * np.prod(a[i + 1: t + 1]) for i in range(t + 1)]
    np.testing.assert_allclose(np.sum(np.square(coeffs)) + a_bar[t] ** 2, 1.0, rtol=1e-12)
    # Eq. (4): μ(x_t) = (x_t − β_t²/β̄_t · ε)/α_t equals Ho et al.'s reverse mean for an ε-prediction.
    key = jax.random.key(3)
    x_t, eps = jax.random.normal(key, (5, 2)), jax.random.normal(jax.random.fold_in(key, 1), (5, 2))
    ts = jnp.array([1, 7, 300, 700, 999])
    mean = reverse.reverse_gaussian(sched, eps, x_t, ts).mean
    seed_mean = (x_t - (b[ts] ** 2 / b_bar[ts])[:, None] * eps) / a[ts][:, None]
    np.testing.assert_allclose(mean, seed_mean, rtol=1e-9, atol=1e-12)


def test_variance_choices(sched):
    x_t, t = jnp.zeros((3, 2)), jnp.array([0, 1, 999])
    small = reverse.log_variance(sched, t, None, x_t, "fixed_small")[:, 0]
    large = reverse.log_variance(sched, t, None, x_t, "fixed_large")[:, 0]
    pv, b = np.asarray(sched.posterior_variance), np.asarray(sched.betas)
    np.testing.assert_allclose(small, np.log([pv[1], pv[1], pv[999]]), rtol=1e-12)
    np.testing.assert_allclose(large, np.log([pv[1], b[1], b[999]]), rtol=1e-12)
    for v_out, expect in ((1.0, large), (-1.0, small)):
        lr = reverse.log_variance(sched, t[1:], jnp.full((2, 2), v_out), x_t[1:], "learned_range")[:, 0]
        np.testing.assert_allclose(lr, expect[1:], rtol=1e-12)
    assert reverse.output_channels(3, "learned_range") == 6 and reverse.output_channels(3, "fixed_large") == 3
    with pytest.raises(ValueError, match="unknown variance 'fixed'"):
        reverse.check_variance("fixed")


def test_thresholding():
    x0 = jnp.array([[0.5, -3.0, 2.0, 0.1], [0.2, -0.3, 0.4, 0.9]])
    np.testing.assert_allclose(reverse.static_threshold(x0)[0], [0.5, -1.0, 1.0, 0.1])
    dyn = reverse.dynamic_threshold(x0, percentile=1.0)
    np.testing.assert_allclose(dyn[0], x0[0] / 3.0, rtol=1e-6)     # s = max|x0| = 3 > 1: rescaled
    np.testing.assert_allclose(dyn[1], x0[1], rtol=1e-6)           # s < 1: untouched
    s = np.quantile(np.abs(np.asarray(x0[0])), 0.5)
    np.testing.assert_allclose(reverse.dynamic_threshold(x0, 0.5)[0], np.clip(x0[0], -s, s) / s, rtol=1e-6)


def test_dynamic_threshold_upper_bound():
    """``max_value`` caps s (diffusers' sample_max_value): s = min(max(1, quantile), max); at 1 it
    is static clipping; below 1 it is refused, through the config as well."""
    x0 = jnp.array([[0.5, -3.0, 2.0, 0.1], [0.2, -0.3, 0.4, 1.5]])
    capped = reverse.dynamic_threshold(x0, percentile=1.0, max_value=2.0)
    np.testing.assert_allclose(capped[0], np.clip(x0[0], -2, 2) / 2, rtol=1e-6)     # s = 3 capped at 2
    np.testing.assert_allclose(capped[1], x0[1] / 1.5, rtol=1e-6)                   # s = 1.5 under the cap
    np.testing.assert_allclose(reverse.threshold(x0, "dynamic", 1.0, 1.0), reverse.static_threshold(x0))
    with pytest.raises(ValueError, match="max_value=0.5 must be >= 1"):
        reverse.dynamic_threshold(x0, max_value=0.5)


def test_dynamic_threshold_takes_its_percentile_in_the_input_precision(x64):
    """With x64 on, s is the float64 quantile, so x̂_0/s matches NumPy's float64 to round-off; a
    float32 quantile (as once) moves s, and every value under it, by ~1e-8."""
    x0 = jnp.linspace(0.0, 3.0, 1001, dtype=jnp.float64)[None] + jnp.array([[0.0], [1e-3]])
    out = reverse.dynamic_threshold(x0, percentile=0.995)
    s = np.quantile(np.abs(np.asarray(x0)), 0.995, axis=1)[:, None]
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, np.clip(np.asarray(x0), -s, s) / s, rtol=1e-13, atol=0)
