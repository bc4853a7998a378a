"""Sample-quality metrics: Fréchet distance (FID), Inception Score, streamed feature statistics;
and PSNR for reconstructions.

Statistics are accumulated in float64 on the host, so a large sample set is streamed through a
feature network batch by batch and the result equals the one-shot computation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FeatureStats:
    """Running count, sum and sum of outer products of feature vectors (float64)."""
    dim: int
    count: int = 0
    total: np.ndarray = field(default=None)
    outer: np.ndarray = field(default=None)

    def __post_init__(self):
        self.total = np.zeros(self.dim) if self.total is None else self.total
        self.outer = np.zeros((self.dim, self.dim)) if self.outer is None else self.outer

    def update(self, features) -> "FeatureStats":
        f = np.asarray(features, np.float64).reshape(-1, self.dim)
        self.count += len(f)
        self.total += f.sum(0)
        self.outer += f.T @ f
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by N − 1, as ``np.cov`` and the FID reference code do)."""
        if self.count < 2:
            raise ValueError("a covariance needs at least 2 feature vectors")
        mu = self.mean
        return (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)

    def save(self, path):
        np.savez(path, count=self.count, total=self.total, outer=self.outer)

    @classmethod
    def load(cls, path) -> "FeatureStats":
        with np.load(path) as f:
            return cls(dim=f["total"].shape[0], count=int(f["count"]), total=f["total"], outer=f["outer"])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)  (Heusel et al. 2017), in float64.

    Tr((Σ₁Σ₂)^½) is the sum of the square roots of the eigenvalues of Σ₁^½ Σ₂ Σ₁^½, which is
    symmetric positive semi-definite and so has a stable eigen-decomposition.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def fid_standard_error(features, reference: FeatureStats, groups: int = 25, seed: int = 0) -> float:
    """Delete-a-group jackknife standard error of FID from ``features`` against fixed reference
    statistics: FID recomputed with each of ``groups`` random parts left out. Conservative in
    expectation (Efron & Stein 1981); it says whether two cells' FIDs differ at all."""
    f = np.asarray(features, np.float64)
    full = FeatureStats(f.shape[1]).update(f)
    parts = np.array_split(np.random.default_rng(seed).permutation(len(f)), groups)
    fids = np.array([fid_from_stats(FeatureStats(full.dim, full.count - len(p), full.total - f[p].sum(0),
                                                 full.outer - f[p].T @ f[p]), reference) for p in parts])
    return float(np.sqrt((groups - 1) / groups * np.sum((fids - fids.mean()) ** 2)))


def fid_text(record: dict) -> str:
    """A measured cell's ``fid`` ± its ``fid_se`` (``fid_standard_error``) as tables print it; records
    made before the standard error was kept show the FID alone."""
    return f"{record['fid']:.2f}" + (f" ± {record['fid_se']:.2f}" if "fid_se" in record else "")


def two_se(a: dict, b: dict, key: str, key_b: str = "") -> float:
    """Two standard errors of the difference of two independent measurements, ``a[key]`` and
    ``b[key_b or key]``, from their ``<key>_se`` entries: 2·√(se_a² + se_b²), the margin by which
    the studies' claims and findings call one figure better than another."""
    return 2 * (a[f"{key}_se"] ** 2 + b[f"{key_b or key}_se"] ** 2) ** 0.5


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) ‖ p(y))) on each of ``splits`` parts; (mean, std) (Salimans et al. 2016)."""
    probs = np.asarray(probs, np.float64)
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(0, keepdims=True)
        kl = np.sum(part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None))), 1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def confident_fraction(probs, threshold: float = 0.9) -> float:
    """The fraction of samples whose most likely class has probability ≥ ``threshold``."""
    return float(np.mean(np.asarray(probs).max(-1) >= threshold))


def psnr(images, references, max_value: float = 255.0) -> np.ndarray:
    """Peak signal-to-noise ratio per image, 10·log10(MAX² / MSE) in dB, of images [N, ...] against
    references (uint8: MAX = 255); identical images are capped at MSE = 1e-10."""
    a, b = np.asarray(images, np.float64), np.asarray(references, np.float64)
    mse = np.mean((a - b).reshape(len(a), -1) ** 2, axis=1)
    return 10 * np.log10(max_value ** 2 / np.maximum(mse, 1e-10))
