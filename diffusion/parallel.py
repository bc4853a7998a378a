"""Data parallelism with ``jax.jit`` over a device mesh: parameters replicated, batches split over ``data``."""
from __future__ import annotations

import itertools
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


def pad_to_devices(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """``x`` [N, ...], the same host array on every process, with its last row repeated up to
    ``padded_count(N)`` rows, as a global array sharded over ``data`` (each process places only
    its own devices' rows; a host array passed to a sharded ``jit`` works in one process only).
    Drop the padding after with ``[:N]``."""
    x = np.asarray(x)
    pad = padded_count(len(x), mesh) - len(x)
    x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
    return jax.make_array_from_callback(x.shape, data_sharded(mesh), lambda index: x[index])


_barrier_count = itertools.count()


def barrier(name: str, timeout_s: int = 3600):
    """Wait until every process reaches this point. It uses the coordination service's barrier, not
    a device collective: CPU collectives (gloo) give up after ~30 s when one process reaches them
    that much later than another (still compiling, say), a barrier waits ``timeout_s``. Every
    process must call the same barriers in the same order; one process: nothing to wait for."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed    # the barrier has no public API yet
    distributed.global_state.client.wait_at_barrier(f"{name}:{next(_barrier_count)}", timeout_s * 1000)


def compiled_together(jitted, *args):
    """``jitted`` compiled for ``args`` on every process, returned once all have compiled it, so its
    first run's collectives start together (``barrier``)."""
    compiled = jitted.lower(*args).compile()
    barrier("compiled")
    return compiled


def gather(x) -> np.ndarray:
    """A global (sharded) array as one host NumPy array on every process: ``np.asarray`` alone
    fails when other processes hold some of its shards. The processes meet at a ``barrier`` first,
    as the computation that made ``x`` may have compiled longer on one of them."""
    barrier("gather")
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
