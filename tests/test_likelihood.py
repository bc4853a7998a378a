"""The variational bound of exact models against the exact log-likelihood of Gaussian data (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from diffusion import likelihood, oracle, schedules

MEAN = jnp.array([0.3, -0.2, 0.1, 0.0])
VAR = jnp.array([0.2, 0.1, 0.3, 0.05])
B = 512


def data(key, n=B):
    return MEAN + jnp.sqrt(VAR) * jax.random.normal(key, (n, 4))


def exact_nll_bpd(x0):
    return -stats.norm(MEAN, np.sqrt(VAR)).logpdf(np.asarray(x0)).mean(1) / np.log(2)


def test_exact_reverse_model_attains_nll_plus_prior_gap(x64):
    """With p_θ(x_{t−1}|x_t) = q(x_{t−1}|x_t) exactly, E[L_VLB] = NLL + KL(q(x_T) ‖ N(0, I)):
    every coefficient of every term is checked at once."""
    sched = schedules.make_schedule("linear", 100)
    x0 = data(jax.random.key(0), 8 * B)
    out = jax.jit(lambda x, k: likelihood.variational_bound(
        oracle.gaussian_reverse(sched, MEAN, VAR), sched, x, k, variance="learned", decoder="gaussian"))(x0, jax.random.key(1))
    gap = np.asarray(out["total"]) - exact_nll_bpd(x0)
    a = float(sched.alphas_cumprod[-1])
    m, v = np.sqrt(a) * np.asarray(MEAN), a * np.asarray(VAR) + 1 - a
    prior_marginal_kl = np.mean(0.5 * (v + m ** 2 - 1 - np.log(v))) / np.log(2)
    se = gap.std() / np.sqrt(len(gap))
    assert se < 0.02 and abs(gap.mean() - prior_marginal_kl) < 4 * se
    assert out["terms"].shape == (8 * B, 100) and out["prior"].shape == (8 * B,)


def test_fixed_variance_bound_is_above_the_nll_and_tightens_with_T(x64):
    x0 = data(jax.random.key(2))
    nll = exact_nll_bpd(x0).mean()
    bounds = []
    for T in (100, 1000):
        sched = schedules.make_schedule("linear", T)
        model = oracle.gaussian_eps(sched, MEAN, jnp.diag(VAR))
        out = likelihood.variational_bound(model, sched, x0, jax.random.key(3), decoder="gaussian")
        total = np.asarray(out["total"])
        assert total.mean() - 4 * total.std() / np.sqrt(B) > nll
        bounds.append(total.mean())
    assert bounds[1] < bounds[0]


def test_eps_error_of_the_exact_denoiser_is_the_posterior_variance_of_eps(x64):
    """The bound's per-step ‖ε − ε̂‖² (the report's Fig. 2 panel): the exact denoiser predicts E[ε | x_t],
    so what is left is Var(ε | x_t) = ᾱ s / (ᾱ s + 1 − ᾱ) per dimension of data variance s."""
    n, sched = 32 * B, schedules.make_schedule("linear", 100)
    out = jax.jit(lambda x, k: likelihood.variational_bound(
        oracle.gaussian_eps(sched, MEAN, jnp.diag(VAR)), sched, x, k, decoder="gaussian"))(data(jax.random.key(4), n),
                                                                                          jax.random.key(5))
    a = np.asarray(sched.alphas_cumprod)[:, None]
    expected = (a * np.asarray(VAR) / (a * np.asarray(VAR) + 1 - a)).mean(1)
    mse = np.asarray(out["mse"])
    assert mse.shape == (n, 100)
    assert np.all(np.abs(mse.mean(0) - expected) < 5 * mse.std(0) / np.sqrt(n))             # each step
    per_image = mse.mean(1)                                                                 # all steps at once
    assert abs(per_image.mean() - expected.mean()) < 4 * per_image.std() / np.sqrt(n) < 0.012 * expected.mean()


# ---- the probability-flow ODE likelihood ----

COV2 = jnp.array([[0.5, 0.2], [0.2, 0.3]])
MEAN2 = jnp.array([1.0, -0.5])


def flow_nll_bpd(sched, x):
    """The exact probability-flow NLL of x under N(MEAN2, COV2) data, bits/dim: the ODE is the affine
    map x_{T−1} − √ᾱ_{T−1}·μ = C_{T−1}^½·C_0^{−½}·(x − √ᾱ_0·μ) (C_t = ᾱ_tΣ + (1−ᾱ_t)I), so
    −log p = −log N(x_{T−1}; 0, I) − ½·log det C_{T−1} + ½·log det C_0."""
    a0, aT = sched.alphas_cumprod[0], sched.alphas_cumprod[-1]
    s, V = jnp.linalg.eigh(COV2)
    c0, cT = a0 * s + 1 - a0, aT * s + 1 - aT
    x_T = jnp.sqrt(aT) * MEAN2 + (x - jnp.sqrt(a0) * MEAN2) @ (V @ jnp.diag(jnp.sqrt(cT / c0)) @ V.T).T
    nll = 0.5 * jnp.sum(x_T ** 2, 1) + np.log(2 * np.pi) - 0.5 * jnp.sum(jnp.log(cT)) + 0.5 * jnp.sum(jnp.log(c0))
    return np.asarray(nll) / (2 * np.log(2))


def test_probability_flow_nll_of_the_exact_gaussian_model(x64):
    """The ODE likelihood (Song et al. 2021) of the exact denoiser: with the exact trace it is the
    closed-form flow's NLL per example (solver tolerance); with Hutchinson's estimator, the same on
    average within 4 standard errors; and both within the prior mismatch of the true log-density."""
    sched = schedules.make_schedule("linear", 1000)
    model = oracle.gaussian_eps(sched, MEAN2, COV2)
    x = MEAN2 + jax.random.normal(jax.random.key(1), (256, 2)) @ jnp.linalg.cholesky(COV2).T
    nll = lambda trace: jax.jit(lambda x, k: likelihood.probability_flow_nll(model, sched, x, k, bins=0, trace=trace))(
        x, jax.random.key(0))
    exact, reference = nll("exact"), flow_nll_bpd(sched, x)
    np.testing.assert_allclose(exact["bits_per_dim"], reference, atol=2e-4)
    assert 20 < int(exact["evaluations"]) < 1000
    gap = np.asarray(nll("hutchinson")["bits_per_dim"]) - reference
    assert abs(gap.mean()) < 4 * gap.std(ddof=1) / np.sqrt(len(gap)) and gap.std() > 0.01
    a0 = sched.alphas_cumprod[0]
    density = stats.multivariate_normal(np.sqrt(a0) * MEAN2, a0 * COV2 + (1 - a0) * np.eye(2)).logpdf(np.asarray(x))
    np.testing.assert_allclose(np.mean(exact["bits_per_dim"]), -density.mean() / (2 * np.log(2)), atol=2e-3)


def test_probability_flow_nll_of_8_bit_data_is_the_dequantised_density(x64):
    """With ``bins`` = 256, data on the 8-bit grid: bits/dim ≈ −log₂(p(x)·w^D)/D with w = 2/255 the
    bin width (the density is smooth on a bin), for x0-, v- and ε-prediction alike."""
    sched = schedules.make_schedule("linear", 1000)
    x = MEAN2 + jax.random.normal(jax.random.key(1), (128, 2)) @ jnp.linalg.cholesky(COV2).T
    x = jnp.round((x + 1) * 127.5) / 127.5 - 1
    a0 = sched.alphas_cumprod[0]
    density = stats.multivariate_normal(np.sqrt(a0) * MEAN2, a0 * COV2 + (1 - a0) * np.eye(2)).logpdf(np.asarray(x))
    expected = (-density.mean() - 2 * np.log(2 / 255)) / (2 * np.log(2))
    eps_model = oracle.gaussian_eps(sched, MEAN2, COV2)
    for prediction, convert in [("eps", lambda x, ts, e: e),
                                ("x0", lambda x, ts, e: (x - jnp.sqrt(1 - a(ts)) * e) / jnp.sqrt(a(ts))),
                                ("v", lambda x, ts, e: jnp.sqrt(a(ts)) * e - jnp.sqrt(1 - a(ts)) * (x - jnp.sqrt(1 - a(ts)) * e) / jnp.sqrt(a(ts)))]:
        a = lambda ts: oracle.alphas_cumprod_at(sched, ts)[:, None]
        model = lambda x, ts, convert=convert: convert(x, ts, eps_model(x, ts))
        out = likelihood.probability_flow_nll(model, sched, x, jax.random.key(0), prediction=prediction, trace="exact")
        assert abs(float(np.mean(out["bits_per_dim"])) - expected) < 0.01, (prediction, out["bits_per_dim"].mean(), expected)


def test_probability_flow_nll_refuses_what_it_cannot_do(x64):
    sched = schedules.make_schedule("linear", 100, zero_terminal=True)
    with np.testing.assert_raises_regex(ValueError, "zero terminal SNR"):
        likelihood.probability_flow_nll(lambda x, t: x, sched, jnp.zeros((1, 2)), jax.random.key(0))
    with np.testing.assert_raises_regex(ValueError, "unknown trace 'jacobian'"):
        likelihood.probability_flow_nll(lambda x, t: x, schedules.make_schedule("linear", 100), jnp.zeros((1, 2)),
                                        jax.random.key(0), trace="jacobian")
