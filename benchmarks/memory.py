"""Per-device memory of training with the state sharded FSDP-style (``config.parallel.fsdp``):
``python -m benchmarks.memory [--configs cifar10_ddpm,imagenet64_adm] [--devices 1,2,4,8] [--per_device_batch 8]``.

For each config and device count n (fsdp = n, CPU virtual devices: the figures are bytes, not times)
it reports the train state's bytes on one device (parameters, EMA and Adam's two moments, laid out by
``parallel.fsdp_shardings``) and XLA's memory analysis of the compiled train step on that layout:
arguments (state + batch), outputs, temporaries (activations, gathered parameters, gradients).
Nothing is allocated: the state is abstract (``jax.eval_shape``) and the step is only compiled. The
batch is ``per_device_batch`` rows per device, so the activations per device stay the same as n
grows and the table shows what sharding the state saves.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import parallel, xla_flags
from experiments import build, loop

GIB = 2 ** 30


def abstract_run(config, mesh, per_device_batch: int):
    """(train step compiled for ``mesh``, abstract sharded state, parameter count) for ``config``."""
    model, schedule, tx = build.make_model(config), build.make_schedule(config), build.make_optimizer(config)
    state = jax.eval_shape(partial(loop.init_state, config, model, schedule, tx), jax.random.key(0))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         state, parallel.fsdp_shardings(state, mesh))
    rows, data = per_device_batch * mesh.devices.size, parallel.data_sharded(mesh)
    batch = {"image": jax.ShapeDtypeStruct((rows,) + build.data_shape(config), jnp.float32, sharding=data),
             "label": jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=data)}
    step = loop.jit_step(loop.make_train_step(config, model, schedule, tx), state, mesh)
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.params))
    return step.lower(state, batch).compile(), state, count


def measure(config, name: str, devices: int, per_device_batch: int) -> dict:
    """One table row: ``config`` (called ``name``) on the first ``devices`` devices, fsdp = devices."""
    mesh = parallel.make_mesh(jax.devices()[:devices], fsdp=devices)
    compiled, state, count = abstract_run(config, mesh, per_device_batch)
    m = compiled.memory_analysis()
    return {"config": name, "params": count, "devices": devices, "batch": per_device_batch * devices,
            "state": parallel.bytes_per_device(state), "arguments": m.argument_size_in_bytes,
            "outputs": m.output_size_in_bytes, "aliased": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes}


def table(rows: list[dict]) -> str:
    """Markdown: one row per (config, devices), bytes in GiB; peak ≈ arguments + outputs − aliased
    (the donated state) + temporaries."""
    lines = ["| config (parameters) | devices = fsdp | global batch | train state / device | step arguments "
             "| step outputs | aliased (donated) | temporaries | peak ≈ |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        peak = r["arguments"] + r["outputs"] - r["aliased"] + r["temp"]
        cells = [r["state"], r["arguments"], r["outputs"], r["aliased"], r["temp"], peak]
        lines.append(f"| {r['config']} ({r['params'] / 1e6:.1f}M) | {r['devices']} | {r['batch']} | "
                     + " | ".join(f"{b / GIB:.3f} GiB" for b in cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="cifar10_ddpm,imagenet64_adm")
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--per_device_batch", type=int, default=8)
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]
    xla_flags.use_xla_cpu_convolutions()
    jax.config.update("jax_num_cpu_devices", max(counts))   # before the backend starts
    rows = []
    for name in args.configs.split(","):
        for n in counts:
            rows.append(measure(importlib.import_module(f"configs.{name}").get_config(), name, n,
                                args.per_device_batch))
            print(f"{name}, {n} devices: state {rows[-1]['state'] / GIB:.3f} GiB/device", flush=True)
    command = "python -m benchmarks.memory " + " ".join(
        f"--{k}={v}" for k, v in vars(args).items() if v != parser.get_default(k))
    print(f"\n## Per-device memory with the state sharded (FSDP), {datetime.date.today()}\n\n"
          f"Device: {jax.devices()[0].platform} ×{len(jax.devices())} (virtual; the figures are XLA's "
          f"compiled memory analysis, not measurements); jax {jax.__version__}.\n"
          f"Command: `{command.strip()}`\n\n{table(rows)}")


if __name__ == "__main__":
    main()
