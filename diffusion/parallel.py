"""Data parallelism with ``jax.jit`` over a 2-axis device mesh (``data``, ``fsdp``): batches split
over every device, the training state replicated or, FSDP-style (ZeRO-3, Rajbhandari et al. 2020),
each array split along ``fsdp``; jit inserts the all-gathers and reduce-scatters."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion.data import datasets


AXES = ("data", "fsdp")


def make_mesh(devices: Optional[Sequence] = None, *, fsdp: int = 1, what: str = "fsdp") -> Mesh:
    """A (devices / ``fsdp``) × ``fsdp`` mesh with axes ``data``, ``fsdp`` over ``devices`` (default:
    every device of every host, in order, so a host's devices are neighbours along ``fsdp``)."""
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if not isinstance(fsdp, int) or fsdp < 1 or n % fsdp:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ValueError(f"{what}={fsdp!r} does not divide the {n} devices: use one of {divisors}")
    return Mesh(np.asarray(devices).reshape(n // fsdp, fsdp), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Rows split over every device of the mesh (both axes): FSDP shards the batch like plain data
    parallelism and the state besides."""
    return NamedSharding(mesh, P(AXES))


def fsdp_spec(shape: Sequence[int], size: int) -> P:
    """Split the largest dimension that ``size`` divides (the first of equal ones) over ``fsdp``;
    replicate when none does (big_vision's ``fsdp`` sharding rule). ``size`` 1: replicated."""
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if size > 1 and shape[dim] % size == 0:
            return P(*(["fsdp" if d == dim else None for d in range(len(shape))]))
    return P()


def fsdp_shardings(tree, mesh: Mesh):
    """One ``NamedSharding`` per leaf of ``tree`` (arrays or ``jax.ShapeDtypeStruct``s): ``fsdp_spec``
    over the mesh's ``fsdp`` axis, for parameters, EMA and optimizer state alike."""
    return jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(a.shape, mesh.shape["fsdp"])), tree)


def bytes_per_device(tree) -> int:
    """The bytes of ``tree``'s leaves (arrays or sharded ``jax.ShapeDtypeStruct``s) that one device holds."""
    return sum(int(np.prod(a.sharding.shard_shape(a.shape))) * np.dtype(a.dtype).itemsize
               for a in jax.tree.leaves(tree))


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


def on_primary(fn, name: str):
    """Run ``fn`` (a change to the shared file system) on process 0 only, then let every process
    continue together at the barrier ``name``, so none reads the files before the change."""
    if jax.process_index() == 0:
        fn()
    barrier(name)


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


def map_images(fn, mesh: Mesh, batch: int = 500):
    """Apply a jitted ``fn(x) -> (a, b)`` over uint8 images in padded, device-sharded batches."""
    batch -= batch % mesh.devices.size

    def apply(images: np.ndarray):
        outs = []
        for i in range(0, len(images), batch):
            x = datasets.to_model_range(images[i:i + batch])
            outs.append([gather(o)[:len(x)] for o in fn(pad_to_devices(x, mesh))])
        return tuple(np.concatenate(parts) for parts in zip(*outs))
    return apply


def encode_split(encode, split: datasets.Split, mesh: Mesh) -> datasets.Split:
    """``split`` with its uint8 images replaced by ``encode``'s latents (float32 [N, h, w, c]), encoded in
    padded, device-sharded batches: a latent-diffusion run's data."""
    fn = jax.jit(lambda x: (encode(x),), in_shardings=data_sharded(mesh))
    return dataclasses.replace(split, images=map_images(fn, mesh)(split.images)[0])
