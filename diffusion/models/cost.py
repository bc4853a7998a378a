"""Parameter count and forward FLOPs per example from XLA's cost analysis."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def compiled_flops(fn, *args) -> float:
    """FLOPs of one call of ``jax.jit(fn)(*args)`` as XLA's cost analysis counts them."""
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis["flops"])


def model_cost(model, params, input_shape, batch: int = 8, **call) -> dict:
    """``{"params": int, "flops_per_example": float}`` for ``model.apply`` at ``input_shape`` (no batch axis)."""
    x = jnp.zeros((batch,) + tuple(input_shape), jnp.float32)
    t = jnp.zeros((batch,), jnp.int32)
    flops = compiled_flops(lambda p, x, t: model.apply({"params": p}, x, t, **call), params, x, t)
    return {"params": int(sum(a.size for a in jax.tree.leaves(params))), "flops_per_example": flops / batch}
