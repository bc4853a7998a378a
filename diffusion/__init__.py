"""Diffusion models as pure JAX functions: schedules, the Gaussian process maths, losses,
likelihood, samplers and guidance; Flax networks live in ``diffusion.models``."""
