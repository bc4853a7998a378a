"""2-D toy distributions (float32 [N, 2], roughly unit scale), seeded and deterministic."""
from __future__ import annotations

import numpy as np


def swiss_roll(n: int, seed: int = 0, noise: float = 0.25) -> np.ndarray:
    """The swiss roll of Sohl-Dickstein et al. 2015 / seed 002's figure, scaled by 1/5."""
    rng = np.random.default_rng(seed)
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1) + noise * rng.standard_normal((n, 2))
    return (x / 5.0).astype(np.float32)


def two_moons(n: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    upper = rng.random(n) < 0.5
    a = np.pi * rng.random(n)
    x = np.where(upper[:, None], np.stack([np.cos(a), np.sin(a)], 1),
                 np.stack([1 - np.cos(a), 0.5 - np.sin(a)], 1))
    x = x + noise * rng.standard_normal((n, 2))
    return ((x - [0.5, 0.25]) * 1.5).astype(np.float32)


def gaussian_mixture(n: int, seed: int = 0, modes: int = 8, radius: float = 2.0, std: float = 0.1) -> np.ndarray:
    """``modes`` isotropic Gaussians evenly spaced on a circle."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, modes, n)
    centres = radius * np.stack([np.cos(2 * np.pi * k / modes), np.sin(2 * np.pi * k / modes)], 1)
    return (centres + std * rng.standard_normal((n, 2))).astype(np.float32)


TOY = {"swissroll": swiss_roll, "moons": two_moons, "gmm": gaussian_mixture}
