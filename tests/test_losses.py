"""Losses, decoder likelihood and timestep samplers against direct numerical derivations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from diffusion import gaussian, losses, schedules, timestep_sampling


def test_normal_kl_matches_numerical_integration(x64):
    for m1, v1, m2, v2 in [(0.0, 1.0, 0.0, 1.0), (0.3, 0.2, -0.5, 1.7), (2.0, 3.0, 1.0, 0.5)]:
        p, q = stats.norm(m1, np.sqrt(v1)), stats.norm(m2, np.sqrt(v2))
        direct = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -30, 30)[0]
        ours = losses.normal_kl(m1, np.log(v1), m2, np.log(v2))
        np.testing.assert_allclose(ours, direct, rtol=1e-8, atol=1e-12)


def test_discretized_likelihood_is_the_bin_probability(x64):
    """P(x) = ∫ over the 8-bit bin around x of N(mean, σ²), end bins open to ±∞."""
    pixels = np.array([0, 1, 77, 128, 254, 255])
    x = pixels / 127.5 - 1.0
    for mean, sigma in [(0.0, 0.05), (0.6, 0.3), (-0.99, 0.01)]:
        d = stats.norm(mean, sigma)
        lo = np.where(pixels == 0, -np.inf, x - 1 / 255)
        hi = np.where(pixels == 255, np.inf, x + 1 / 255)
        direct = [integrate.quad(d.pdf, a, b, points=[mean] if a < mean < b else None)[0] if np.isfinite(a) and np.isfinite(b)
                  else d.cdf(b) - d.cdf(a) for a, b in zip(lo, hi)]
        ours = np.exp(losses.discretized_gaussian_log_likelihood(jnp.asarray(x), mean, np.log(sigma)))
        direct = np.asarray(direct)
        visible = direct > 1e-10         # below that quad's absolute tolerance: see the tail test
        np.testing.assert_allclose(ours[visible], direct[visible], rtol=1e-6)
    # The bins partition the line: probabilities over all 256 values sum to one.
    allx = jnp.arange(256) / 127.5 - 1.0
    total = jnp.exp(losses.discretized_gaussian_log_likelihood(allx, 0.1, np.log(0.4))).sum()
    np.testing.assert_allclose(total, 1.0, rtol=1e-10)


def test_discretized_likelihood_is_exact_far_into_both_tails(x64):
    """log P(x) against 60-digit arithmetic (mpmath) when the mean is far from the bin, for edge and
    interior bins alike: once the interior bins were floored at log 1e-12 = −27.6 nats while the
    edge bins went on to −379,171, so the two kinds of bin disagreed by orders of magnitude."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    Phi = lambda z: mpmath.ncdf(z)
    pixels = np.array([0, 1, 64, 128, 200, 254, 255])
    x = pixels / 127.5 - 1.0
    for mean, sigma in [(0.9, 0.01), (-0.95, 0.002), (3.0, 0.05), (0.0, 1e-3)]:
        ours = np.asarray(losses.discretized_gaussian_log_likelihood(jnp.asarray(x), mean, np.log(sigma)))
        for p_, xi, o in zip(pixels, x, ours):
            lo = -mpmath.inf if p_ == 0 else (mpmath.mpf(xi) - mpmath.mpf(1) / 255 - mean) / sigma
            hi = mpmath.inf if p_ == 255 else (mpmath.mpf(xi) + mpmath.mpf(1) / 255 - mean) / sigma
            # mpmath's exponents are unbounded, so Φ far into the left tail is exact; a bin right of
            # the mean is taken mirrored there (Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi)), as 1 − 10⁻¹¹⁰⁰⁰ is not.
            mass = Phi(-lo) - Phi(-hi) if lo > 0 else Phi(hi) - Phi(lo)
            exact = float(mpmath.log(mass))
            np.testing.assert_allclose(o, exact, rtol=1e-9, atol=1e-12, err_msg=f"pixel {p_}, mean {mean}, σ {sigma}")


def test_vlb_term_vanishes_for_the_true_posterior_and_loss_scales(x64):
    sched = schedules.make_schedule("linear", 100)
    key = jax.random.key(0)
    x0 = jax.random.uniform(key, (6, 4), minval=-1, maxval=1)
    noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
    t = jnp.array([1, 2, 30, 50, 80, 99])
    perfect = lambda x_t, ts: noise     # the exact ε: p_θ's mean is the true posterior mean
    out = losses.training_losses(perfect, sched, x0, t, noise, loss="vlb")
    np.testing.assert_allclose(out["vlb"], 0.0, atol=1e-10)    # fixed-small variance = β̃: KL is 0
    np.testing.assert_allclose(out["mse"], 0.0, atol=1e-20)
    wrong = lambda x_t, ts: noise + 0.1
    out = losses.training_losses(wrong, sched, x0, t, noise, loss="vlb")
    # KL between Gaussians of equal variance: (Δμ)²/(2σ²) with Δμ = β_t/√(1−ᾱ_t)/√α_t · 0.1.
    b, ab, pv = (np.asarray(a)[t] for a in (sched.betas, sched.alphas_cumprod, sched.posterior_variance))
    dmu = b / np.sqrt(1 - ab) / np.sqrt(1 - b) * 0.1
    np.testing.assert_allclose(out["vlb"], dmu ** 2 / (2 * pv) / np.log(2), rtol=1e-8)
    np.testing.assert_allclose(out["loss"], 100 * out["vlb"], rtol=1e-12)


def test_min_snr_weight_is_the_same_objective_in_every_parameterisation(x64):
    """min(SNR, γ)·‖x0 − x̂0‖² is one quantity; the ε and v weights must express it."""
    sched = schedules.make_schedule("cosine", 1000)
    key = jax.random.key(1)
    x0, noise = jax.random.normal(key, (5, 3)), jax.random.normal(jax.random.fold_in(key, 1), (5, 3))
    t = jnp.array([0, 10, 200, 800, 999])
    x_t = gaussian.q_sample(sched, x0, t, noise)
    x0_hat = x0 + 0.1 * jax.random.normal(jax.random.fold_in(key, 2), x0.shape)
    eps_hat = gaussian.eps_from_x0(sched, x_t, t, x0_hat)
    weighted = {}
    for pred in gaussian.PREDICTIONS:
        model = lambda x, ts, pred=pred: gaussian.from_eps(sched, x, t, eps_hat, pred)
        out = losses.training_losses(model, sched, x0, t, noise, prediction=pred, weighting="min_snr")
        weighted[pred] = out["loss"]
    np.testing.assert_allclose(weighted["eps"], weighted["x0"], rtol=1e-8)
    np.testing.assert_allclose(weighted["v"], weighted["x0"], rtol=1e-8)
    snr = np.asarray(sched.snr)[t]
    np.testing.assert_allclose(weighted["x0"], np.minimum(snr, 5.0) * np.mean((x0 - x0_hat) ** 2, 1), rtol=1e-8)
    p2 = losses.timestep_weight(sched, t, "eps", "p2", p2_gamma=1.0, p2_k=1.0)
    np.testing.assert_allclose(p2, 1 / (1 + snr), rtol=1e-10)


def test_hybrid_loss_stops_the_vlb_gradient_through_the_mean():
    sched = schedules.make_schedule("cosine", 50)
    x0 = jax.random.uniform(jax.random.key(0), (8, 2), minval=-1, maxval=1)
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.arange(8) * 6

    def grads(loss, params):
        def f(p):
            model = lambda x, ts: jnp.concatenate([p["mean"] * x, jnp.broadcast_to(p["var"], x.shape)], -1)
            return losses.training_losses(model, sched, x0, t, noise, variance="learned_range", loss=loss)
        return jax.grad(lambda p: f(p)["loss"].mean())(params), jax.grad(lambda p: f(p)["mse"].mean())(params)

    params = {"mean": jnp.array(0.3), "var": jnp.array(0.2)}
    g_hybrid, g_mse = grads("hybrid", params)
    np.testing.assert_allclose(g_hybrid["mean"], g_mse["mean"], rtol=1e-6)   # VLB adds nothing to the mean
    assert abs(g_hybrid["var"]) > 0                                            # ... but trains the variance
    g_vlb, _ = grads("vlb", params)
    assert abs(g_vlb["mean"] - g_mse["mean"]) > 1e-6                           # plain VLB does reach the mean
    with pytest.raises(ValueError, match="trains no variance"):
        losses.training_losses(lambda x, ts: jnp.concatenate([x, x], -1), sched, x0, t, noise,
                               variance="learned_range", loss="simple")


def test_importance_sampler_is_uniform_until_full_then_unbiased():
    T, K = 6, 10
    state = timestep_sampling.init_loss_history(T, K)
    np.testing.assert_allclose(timestep_sampling.importance_probs(state), 1 / T)
    scale = jnp.arange(1.0, T + 1)
    for i in range(K):
        t = jnp.arange(T)
        state = timestep_sampling.update_loss_history(state, t, scale * (1 + 0.01 * i))
        full = i == K - 1
        assert bool(jnp.all(timestep_sampling.importance_probs(state) == 1 / T)) != full
    # Rolling history: the oldest entry is dropped once a step holds K entries.
    state2 = timestep_sampling.update_loss_history(state, jnp.array([0, 0]), jnp.array([7.0, 8.0]))
    np.testing.assert_allclose(state2.losses[0, -2:], [7.0, 8.0])
    np.testing.assert_allclose(state2.losses[0, :-2], state.losses[0, 2:])
    p = timestep_sampling.importance_probs(state, uniform_prob=0.0)
    rms = np.sqrt(np.mean(np.asarray(state.losses) ** 2, 1))
    np.testing.assert_allclose(p, rms / rms.sum(), rtol=1e-6)
    # E[w·L_t] under p equals the uniform mean of L_t (Monte Carlo).
    t, w = timestep_sampling.importance_sample(state, jax.random.key(0), 200_000)
    est = np.mean(np.asarray(w) * np.asarray(scale)[np.asarray(t)])
    np.testing.assert_allclose(est, np.mean(np.asarray(scale)), rtol=1e-2)


def test_stratified_timesteps_are_each_uniform_and_cover_the_chain_evenly():
    """VDM's low-discrepancy draw: every row's t is U{0..T−1} (χ² over 20,000 batches) and each batch
    has one row per stratum [jT/B, (j+1)T/B). The batch's mean of v = (u + i/B) mod 1 is
    (u mod 1/B) + (B − 1)/(2B), so Var(mean t) ≈ T²/(12B²): B times less than i.i.d. draws'
    (T² − 1)/(12B)."""
    draw = lambda T, B, n: map(np.asarray, jax.jit(jax.vmap(lambda k: timestep_sampling.stratified(k, B, T)))(
        jax.random.split(jax.random.key(0), n)))
    T, B = 10, 4
    t, w = draw(T, B, 20_000)
    assert t.shape == (20_000, B) and t.dtype == np.int32 and np.all(w == 1.0)
    for row in t.T:
        counts = np.bincount(row, minlength=T)
        assert stats.chisquare(counts).pvalue > 1e-3, counts
    lower, upper = np.floor(np.arange(B) * T / B), np.ceil((np.arange(B) + 1) * T / B)
    assert np.all((np.sort(t, 1) >= lower) & (np.sort(t, 1) < upper))
    T, B = 1000, 64
    t, _ = draw(T, B, 4_000)
    assert np.all(np.diff(np.sort(t, 1), axis=1) >= 15)   # one row per 15.6-wide stratum
    np.testing.assert_allclose(np.var(t.mean(1)), T ** 2 / (12 * B ** 2), rtol=0.1)
