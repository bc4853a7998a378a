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
