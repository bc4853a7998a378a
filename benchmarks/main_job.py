"""The main job's training throughput on this machine for the U-Net widths, depths and batch sizes
issue 26's recipe search weighs: train images/s and steps/s of the compiled step (Adam, clipping,
EMA), parameters, and the steps that fit the main job's training time at each rate.

python -m benchmarks.main_job [--seconds 3] [--budget_s 1500] [--batches 64,128] [--models w16,w32]

Each row compiles its own step; rates are medians of three windows. Run it on an otherwise idle
machine: rows measured side by side in one run compare; runs on different days vary ±20%.
"""
import argparse
import itertools

import jax

from benchmarks.run import compiled_train_step, train_rate
from configs import mnist
from diffusion import xla_flags

VARIANTS = {   # name: the model's config fields that differ from configs/mnist.py
    "w16": {},
    "w24": {"base_channels": 24},
    "w32": {"base_channels": 32},
    "w32_mult122": {"base_channels": 32, "channel_mult": (1, 2, 2)},
    "w16_2blocks": {"num_res_blocks": 2},
    "w32_2blocks": {"base_channels": 32, "num_res_blocks": 2},
    "w16_mult122": {"channel_mult": (1, 2, 2)},        # 32 channels at 7×7 in place of 64: a smaller, faster U-Net
    "w16_no_attention": {"attention_resolutions": ()},
    "w16_scale_shift": {"scale_shift_norm": True},   # ADM's adaptive group norm: the step scales and shifts each norm
}


def measure(name: str, batch: int, seconds: float) -> dict:
    config = mnist.get_config()
    for field, value in VARIANTS[name].items():
        setattr(config.model, field, value)
    compiled, state, data, _, _ = compiled_train_step(config, batch)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    rate, _ = train_rate(compiled, state, data, windows=3, seconds=seconds)
    return {"model": name, "batch": batch, "params": params, "images_s": rate, "steps_s": rate / batch}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="Seconds per timing window.")
    parser.add_argument("--budget_s", type=float, default=1500.0, help="Training seconds the table converts to steps.")
    parser.add_argument("--batches", default="64,128", help="Batch sizes, comma-separated.")
    parser.add_argument("--models", default=",".join(VARIANTS), help="Variant names, comma-separated.")
    args = parser.parse_args()
    xla_flags.use_xla_cpu_convolutions()   # as the entry points do, before the backend starts
    print(f"| U-Net (fields changed from configs/mnist.py) | batch | parameters | train images/s | steps/s | steps in {args.budget_s:.0f} s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, batch in itertools.product(args.models.split(","), map(int, args.batches.split(","))):
        row = measure(name, batch, args.seconds)
        changed = ", ".join(f"{k} {v}" for k, v in VARIANTS[name].items()) or "as configs/mnist.py"
        print(f"| {name}: {changed} | {batch} | {row['params']:,} | {row['images_s']:.0f} | {row['steps_s']:.2f} | "
              f"{row['steps_s'] * args.budget_s:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
