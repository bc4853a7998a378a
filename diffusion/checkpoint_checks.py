"""What a checkpoint's save and restore check, apart from orbax: every leaf finite and every leaf's
checksum, both computed on device, so nothing global is copied to a host (a failed save is
``checkpoint_failures``'s).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import xla_flags


def named_leaves(tree: Any) -> dict[str, Any]:
    """``{"params/conv_in/kernel": leaf, ...}`` in pytree order."""
    return {jax.tree_util.keystr(path, simple=True, separator="/") or "<root>": leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@xla_flags.one_shot_jit
def _finite_flags(leaves: list) -> jax.Array:
    """One bool per leaf: all its elements are finite."""
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def _rows(fn, leaves: list) -> list:
    """``fn(leaves)``, a jitted function giving one row per leaf, called once per set of devices
    the leaves live on (one computation cannot mix arrays committed to different devices)."""
    arrays = [jnp.asarray(x) for x in leaves]
    groups: dict[frozenset, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(frozenset(a.sharding.device_set), []).append(i)
    rows = [None] * len(arrays)
    for indices in groups.values():
        for i, row in zip(indices, np.asarray(fn([arrays[i] for i in indices]))):
            rows[i] = row
    return rows


def nonfinite_leaves(state: Any) -> list[str]:
    """Names of ``state``'s floating leaves that hold a NaN or Inf (jitted on device; only one
    bool per leaf comes to the host)."""
    named = {k: v for k, v in named_leaves(state).items() if jnp.issubdtype(jnp.result_type(v), jnp.inexact)}
    flags = _rows(_finite_flags, list(named.values()))
    return [name for name, finite in zip(named, flags) if not finite]


def _bits(x: jax.Array) -> jax.Array:
    """``x``'s raw bits as a flat uint32 vector; a 64-bit element gives two words."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    word = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, word).astype(jnp.uint32).ravel()


def _checksum(x: jax.Array) -> jax.Array:
    """[Σ bits, Σ bits·(2i+1)] mod 2³² over the flat index i: integer wrap-around sums are exact
    in any order, so the result does not depend on how the array is sharded; the odd weights make
    it sensitive to moved as well as changed words."""
    bits = _bits(x)
    weights = 2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)])


@xla_flags.one_shot_jit
def _checksum_rows(leaves: list) -> jax.Array:
    return jnp.stack([_checksum(x) for x in leaves])


def checksums(state: Any) -> dict[str, list[int]]:
    """``{leaf path: [sum, weighted sum]}`` of ``state``'s raw bits, computed on device."""
    named = named_leaves(state)
    rows = _rows(_checksum_rows, list(named.values()))
    return {name: [int(a), int(b)] for name, (a, b) in zip(named, rows)}

