"""Data parallelism with ``jax.jit`` over a device mesh: parameters replicated, batches split over ``data``."""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices: Optional[Sequence] = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over ``devices`` (default: every device of every host)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def check_batch(global_batch: int, mesh: Mesh, what: str = "train.batch_size"):
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"{what}={global_batch} does not divide over the {n} devices: use a multiple "
                         f"of {n} (e.g. {max(n, global_batch - global_batch % n)})")
    if global_batch % jax.process_count():
        raise ValueError(f"{what}={global_batch} does not divide over the {jax.process_count()} hosts")


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Assemble each host's rows into global arrays sharded over ``data``."""
    sharding = data_sharded(mesh)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local)


def padded_count(n: int, mesh: Mesh) -> int:
    """``n`` rounded up to a multiple of the device count, the smallest batch that shards evenly."""
    return n + -n % mesh.devices.size


def pad_to_devices(x: np.ndarray, mesh: Mesh) -> np.ndarray:
    """``x`` [N, ...] with its last row repeated up to ``padded_count(N)`` rows; drop them after with ``[:N]``."""
    pad = padded_count(len(x), mesh) - len(x)
    return np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x


def gather(x) -> np.ndarray:
    """A global (sharded) array as one host NumPy array on every process: ``np.asarray`` alone
    fails when other processes hold some of its shards."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
