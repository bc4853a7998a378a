"""Parameter count and forward FLOPs per example from XLA's cost analysis."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def hlo_flops(fn, *args) -> float:
    """FLOPs of one call of ``fn(*args)`` by XLA's HLO cost analysis of the program lowered for the
    CPU, without compiling it; ``args`` may be ``jax.ShapeDtypeStruct``s. The count is the program's,
    whichever device runs it: XLA:GPU's own analysis of a compiled program leaves out the convolutions
    it hands to cuDNN as custom calls, and so counts a fraction of a U-Net's FLOPs (measured:
    benchmarks/RESULTS.md); MFU on a GPU is computed from this count."""
    analysis = jax.jit(fn).trace(*args).lower(lowering_platforms=("cpu",)).cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis["flops"])


def model_cost(model, params, input_shape, batch: int = 8, **call) -> dict:
    """``{"params": int, "flops_per_example": float}`` for ``model.apply`` at ``input_shape`` (no batch axis)."""
    x = jnp.zeros((batch,) + tuple(input_shape), jnp.float32)
    t = jnp.zeros((batch,), jnp.int32)
    flops = hlo_flops(lambda p, x, t: model.apply({"params": p}, x, t, **call), params, x, t)
    return {"params": int(sum(a.size for a in jax.tree.leaves(params))), "flops_per_example": flops / batch}
