"""Diffusion models as pure JAX functions: schedules, the Gaussian process maths, losses,
likelihood, samplers and guidance; Flax networks live in ``diffusion.models``.

Importing it changes nothing in the environment; the CPU setting the entry points use is
``diffusion.xla_flags.use_xla_cpu_convolutions()``.
"""
