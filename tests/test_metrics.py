"""FID, Inception Score and streamed statistics against closed forms; the shipped MNIST classifier."""
import numpy as np
import pytest
import scipy.linalg

from configs import mnist
from diffusion import metrics, parallel
from diffusion.data import datasets
from experiments import scoring


def random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_the_closed_forms():
    # 1-D: (μ₁ − μ₂)² + (σ₁ − σ₂)².
    assert metrics.frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(1.5 ** 2 + 1.5 ** 2, rel=1e-12)
    # Commuting (diagonal) covariances: ‖μ₁ − μ₂‖² + Σ (√a_i − √b_i)².
    a, b = np.array([0.5, 2.0, 3.0]), np.array([1.0, 0.1, 3.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # General covariances: against the matrix square root of Σ₁Σ₂ (scipy), the reference code's route.
    rng = np.random.default_rng(0)
    s1, s2 = random_cov(rng, 20), random_cov(rng, 20)
    m1, m2 = rng.normal(size=20), rng.normal(size=20)
    reference = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(reference, rel=1e-9)
    assert metrics.frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)


def test_streamed_statistics_equal_one_shot():
    x = np.random.default_rng(1).normal(size=(1000, 16)) * np.arange(1, 17) + 3.0
    stats = metrics.FeatureStats(16)
    for part in np.array_split(x, 7):
        stats.update(part.astype(np.float32))
    np.testing.assert_allclose(stats.mean, x.astype(np.float32).astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False),
                               rtol=1e-9, atol=1e-9)


def test_inception_score_limits():
    k = 7
    constant = np.tile(np.eye(10)[3], (700, 1))
    assert metrics.inception_score(constant)[0] == pytest.approx(1.0)
    confident = np.eye(k)[np.arange(700) % k]          # each split holds every class equally often
    mean, std = metrics.inception_score(confident, splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    uniform = np.full((100, k), 1 / k)                  # unsure predictions score 1 too
    assert metrics.inception_score(uniform)[0] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def mnist_features():
    mesh = parallel.make_mesh()
    _, feature_fn = scoring.make_feature_fn(mnist.get_config(), mesh, "classifier")
    train, heldout = datasets.load_splits("mnist", image_size=28, holdout_fraction=0.1)
    return feature_fn, train, heldout


def test_shipped_classifier_passes_98_percent_on_heldout(mnist_features):
    feature_fn, _, heldout = mnist_features
    _, probs = feature_fn(heldout.images)
    accuracy = np.mean(probs.argmax(1) == heldout.labels)
    assert accuracy >= 0.98, accuracy
    # Real digits are classified confidently and score close to the 10 classes.
    assert metrics.confident_fraction(probs) > 0.95
    assert 8.5 < metrics.inception_score(probs)[0] <= 10.0


def test_fid_is_zero_on_itself_and_grows_with_noise(mnist_features):
    feature_fn, train, heldout = mnist_features
    ref = metrics.FeatureStats(128).update(feature_fn(train.images[:3000])[0])
    # Zero up to the round-off of square roots of the (ReLU-)rank-deficient covariance's null eigenvalues.
    assert metrics.fid_from_stats(ref, ref) == pytest.approx(0.0, abs=1e-6 * np.trace(ref.cov))
    rng = np.random.default_rng(0)
    fids = []
    for sigma in (0.0, 0.1, 0.2, 0.4, 0.8):
        x = datasets.to_model_range(heldout.images) + sigma * rng.normal(size=heldout.images.shape)
        feats = feature_fn(datasets.to_uint8(np.clip(x, -1, 1)))[0]
        fids.append(metrics.fid_from_stats(metrics.FeatureStats(128).update(feats), ref))
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert fids[0] < 0.1 * fids[-1]


def test_fid_standard_error_matches_the_monte_carlo_spread_of_fid():
    """The jackknife standard error from one sample set ≈ the standard deviation of FID over
    independent sample sets, also with fewer samples than feature dimensions (where a bootstrap
    over-states it about 2×, duplicated samples shrinking the covariance)."""
    rng = np.random.default_rng(3)
    for d, n in ((16, 250), (128, 250)):
        mu, cov = 0.3 * rng.normal(size=d), random_cov(rng, d)
        reference = metrics.FeatureStats(d).update(rng.normal(size=(50_000, d)))
        draw = lambda: rng.multivariate_normal(mu, cov, size=n)
        monte_carlo = np.std([metrics.fid_from_stats(metrics.FeatureStats(d).update(draw()), reference)
                              for _ in range(200)], ddof=1)
        jackknife = np.mean([metrics.fid_standard_error(draw(), reference, seed=i) for i in range(8)])
        assert jackknife == pytest.approx(monte_carlo, rel=0.2), (d, n)
