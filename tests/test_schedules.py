"""Schedules against their defining formulas, in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import schedules


def test_linear_matches_ho_et_al_and_rescales(x64):
    s = schedules.make_schedule("linear", 1000)
    np.testing.assert_allclose([s.betas[0], s.betas[-1]], [1e-4, 0.02], rtol=1e-12)
    short = schedules.make_schedule("linear", 250)
    np.testing.assert_allclose([short.betas[0], short.betas[-1]], [4e-4, 0.08], rtol=1e-12)


def test_cosine_alphas_cumprod_is_squared_cosine(x64):
    T, s = 1000, 0.008
    sched = schedules.make_schedule("cosine", T)
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
    t = np.arange(1, T + 1)
    unclipped = np.asarray(sched.betas) < 0.999
    np.testing.assert_allclose(np.asarray(sched.alphas_cumprod)[unclipped], (f(t) / f(0))[unclipped], rtol=1e-10)
    assert np.asarray(sched.betas).max() <= 0.999 and not unclipped.all()


def test_jsd_constant_quadratic_sigmoid(x64):
    np.testing.assert_allclose(schedules.make_schedule("jsd", 10).betas, 1 / np.arange(10, 0, -1))
    c = schedules.make_schedule("constant", 50)
    assert c.num_steps == 50 and np.all(np.asarray(c.betas) == 0.2)
    np.testing.assert_allclose(c.alphas_cumprod[-1], 0.8 ** 50, rtol=1e-12)
    q = np.asarray(schedules.make_schedule("quadratic", 1000).betas)
    np.testing.assert_allclose(np.sqrt(q), np.linspace(1e-2, np.sqrt(0.02), 1000), rtol=1e-12)
    ldm = np.asarray(schedules.make_schedule("ldm", 1000).betas)     # CompVis make_beta_schedule("linear", 1000, 0.0015, 0.0195)
    np.testing.assert_allclose(ldm, np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000) ** 2, rtol=1e-12)
    sg = np.asarray(schedules.make_schedule("sigmoid", 1000).betas)
    assert np.all(np.diff(sg) > 0) and 1e-4 < sg[0] < sg[-1] < 0.02


def test_derived_fields_from_definitions(x64):
    s = schedules.make_schedule("linear", 100)
    b = np.asarray(s.betas)
    ab = np.array([np.prod(1 - b[: t + 1]) for t in range(100)])
    np.testing.assert_allclose(s.alphas_cumprod, ab, rtol=1e-12)
    np.testing.assert_allclose(s.snr, ab / (1 - ab), rtol=1e-10)
    np.testing.assert_allclose(s.posterior_variance[1:], b[1:] * (1 - ab[:-1]) / (1 - ab[1:]), rtol=1e-12)
    assert s.posterior_variance[0] == 0 and s.posterior_log_variance_clipped[0] == np.log(s.posterior_variance[1])
    assert s.timesteps.dtype == jnp.int32 and np.all(np.asarray(s.timesteps) == np.arange(100))


def test_user_betas_and_errors():
    s = schedules.make_schedule(np.full(7, 0.1))
    assert s.num_steps == 7 and s.betas.dtype == jnp.float32
    with pytest.raises(ValueError, match="unknown beta schedule 'cosin'"):
        schedules.make_schedule("cosin", 10)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        schedules.make_schedule(np.array([0.1, 1.5]))


def test_schedule_is_a_pytree_under_jit_and_vmap():
    a, b = schedules.make_schedule("linear", 20), schedules.make_schedule("cosine", 20)
    total = jax.jit(lambda s: s.alphas_cumprod.sum())(a)
    np.testing.assert_allclose(total, np.asarray(a.alphas_cumprod).sum(), rtol=1e-6)
    stacked = jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)
    last = jax.vmap(lambda s: s.alphas_cumprod[-1])(stacked)
    np.testing.assert_allclose(last, [a.alphas_cumprod[-1], b.alphas_cumprod[-1]], rtol=1e-6)


@pytest.mark.parametrize("spec", ["uniform50", "quad50", "10,10,10,10,10", "50"])
def test_respaced_alphas_cumprod_equals_original_at_kept_steps(x64, spec):
    full = schedules.make_schedule("linear", 1000)
    kept = schedules.space_timesteps(1000, spec)
    short = schedules.respace(full, kept)
    assert short.num_steps == 50
    np.testing.assert_allclose(short.alphas_cumprod, np.asarray(full.alphas_cumprod)[kept], rtol=1e-12)
    np.testing.assert_array_equal(short.timesteps, kept)
    # Each respaced step is a valid one-step Gaussian transition of the shorter chain.
    np.testing.assert_allclose(np.cumprod(1 - np.asarray(short.betas)), short.alphas_cumprod, rtol=1e-12)


def test_spacings():
    np.testing.assert_array_equal(schedules.space_timesteps(1000, 50), np.arange(0, 1000, 20))
    sections = schedules.space_timesteps(300, "10,10,10")
    assert len(sections) == 30 and {0, 99, 100, 199, 200, 299} <= set(sections.tolist())
    quad = schedules.space_timesteps(1000, "quad10")
    assert quad[0] == 0 and np.all(np.diff(np.diff(quad)) >= 0)
    with pytest.raises(ValueError, match="cannot keep 20 steps out of 10"):
        schedules.space_timesteps(10, 20)
    with pytest.raises(ValueError, match="cannot parse timestep spacing"):
        schedules.space_timesteps(10, "fast")


def test_leading_trailing_linspace_and_single_section_spacings():
    """diffusers' definitions (Lin et al. 2024, Table 2): leading ⌊i·T/S⌋ from 0; trailing
    round(T − i·T/S) − 1, so sampling starts at T − 1; linspace round(linspace(0, T − 1, S)); and
    improved-diffusion's one section '25' of 4000 (both ends kept), written 'sections:25'."""
    np.testing.assert_array_equal(schedules.space_timesteps(1000, "leading10"), np.arange(0, 1000, 100))
    np.testing.assert_array_equal(schedules.space_timesteps(1000, "trailing10"), np.arange(99, 1000, 100))
    trailing = schedules.space_timesteps(1000, "trailing7")
    np.testing.assert_array_equal(trailing, np.sort(np.round(np.arange(1000, 0, -1000 / 7)).astype(int) - 1))
    assert trailing[-1] == 999
    np.testing.assert_array_equal(schedules.space_timesteps(1000, "linspace5"), [0, 250, 500, 749, 999])
    one = schedules.space_timesteps(4000, "sections:25")
    assert len(one) == 25 and one[0] == 0 and one[-1] == 3999
    np.testing.assert_array_equal(one, [round(i * 3999 / 24) for i in range(25)])
    np.testing.assert_array_equal(schedules.space_timesteps(300, "sections:10,10,10"),
                                  schedules.space_timesteps(300, "10,10,10"))
    with pytest.raises(ValueError, match="cannot parse timestep spacing 'trailing'"):
        schedules.space_timesteps(1000, "trailing")


def test_zero_terminal_snr(x64):
    """Lin et al. 2024, Algorithm 1: ᾱ_{T−1} = 0 exactly (β_{T−1} = 1), √ᾱ_0 kept, √ᾱ an affine
    map of the original's (so still strictly decreasing), and a v-prediction loss finite at t = T − 1."""
    from diffusion import losses
    base, zero = schedules.make_schedule("linear", 1000), schedules.make_schedule("linear", 1000, zero_terminal=True)
    assert float(zero.alphas_cumprod[-1]) == 0.0 and float(zero.betas[-1]) == 1.0
    np.testing.assert_allclose(zero.alphas_cumprod[0], base.alphas_cumprod[0], rtol=1e-12)
    a, b = np.sqrt(np.asarray(base.alphas_cumprod)), np.sqrt(np.asarray(zero.alphas_cumprod))
    slope, intercept = np.polyfit(a, b, 1)
    np.testing.assert_allclose(b, slope * a + intercept, atol=1e-12)
    assert np.all(np.diff(b) < 0)
    x0 = jax.random.uniform(jax.random.key(0), (4, 3), minval=-1, maxval=1)
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.full((4,), 999)
    v_model = lambda x_t, ts: 0.3 * x_t                       # any finite network
    out = losses.training_losses(v_model, zero, x0, t, noise, prediction="v")
    assert np.all(np.isfinite(out["loss"]))


def test_zero_terminal_snr_needs_v_or_x0_prediction():
    from configs import base
    from experiments import build
    c = base.get_config()
    c.diffusion.zero_terminal_snr = True
    with pytest.raises(ValueError, match="zero_terminal_snr .* set diffusion.prediction='v'"):
        build.validate(c)
    c.diffusion.prediction = "v"
    build.validate(c)
