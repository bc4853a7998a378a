"""The GPU suite: ``python -m benchmarks.gpu [--budget 520] [--json results.json]``, and ``--report results.json`` to render a saved run.

For Ho et al.'s CIFAR-10 U-Net (35.7M parameters, 32×32) and ADM's ImageNet-64 U-Net (296M, 64×64),
in bfloat16 and float32 compute (parameters, optimizer state and EMA float32 either way): train
images/s, whole compiled DDIM-50 and DDPM-1000 trajectories in images/s, the train step's device
memory, and MFU — XLA's FLOP count of the very executable timed, times its rate, over a bf16 matrix
product timed in the same run. The peer, in the same process: diffusers' ``UNet2DModel`` in the same
layout under ``torch.compile`` with bf16 autocast, channels_last and fused Adam, at the same batch.
Then bf16's numerics on the GPU: a few hundred MNIST steps in float32 and bfloat16 from the same
initialisation and batches (with a second float32 seed for the noise between runs), and DDIM samples of
the float32-trained model under bf16 compute against float32. A ``jax.profiler`` trace of the CIFAR-10
bf16 train step is summarised by kernel.

A device lease is short: items run in order of importance, each under ``--budget`` seconds in all
(an item that would start past it is skipped, and says so), every result is written to ``--json``
as soon as it exists, and one item's failure is recorded and does not stop the rest.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import inspect
import json
import os
import platform
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.run import (Peer, compiled_train_step, forward_flops, median_rate, model_config, peak_flops,
                            train_rate, trajectory)
from configs import mnist
from diffusion.data import datasets, pipeline
from experiments import build

# Batches: Ho et al.'s 128 for the CIFAR-10 train step (the issue's MFU goal is stated at it); ADM's
# per-GPU share of its 2048 over 32 GPUs, 64; sampling batches large enough to fill the chip.
PLAN = {"cifar10": {"train": 128, "ddim": 1000, "ddpm": 256},
        "adm64": {"train": 64, "ddim": 256}}
TINY_PLAN = {"cifar10": {"train": 4, "ddim": 4, "ddpm": 2}, "adm64": {"train": 2, "ddim": 2}}
FID_IMAGES = 50_000          # the DDIM goal: 50,000 CIFAR-10 images in under 2 minutes
DEFAULT_BUDGET_S = 520.0   # seconds: a 10-minute device call less the start and the transfers
BF16_STEPS = 300             # MNIST steps of the bf16-against-float32 training check


class Budget:
    """Seconds left of the run's ``total``; ``allows(reserve)``: enough left to start an item."""

    def __init__(self, total: float):
        self.start, self.total = time.perf_counter(), total

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, reserve: float) -> bool:
        return self.elapsed() + reserve <= self.total


def once_rate(fn, work: float) -> float:
    """Work per second of one call after a warm-up call (for trajectories of many seconds)."""
    fn()
    start = time.perf_counter()
    fn()
    return work / (time.perf_counter() - start)


def environment() -> dict:
    """Device, versions, and whether float32 products run at full precision: a 1024² product against
    float64 (relative error ~1e-7 for float32, ~1e-3 when tensor cores round operands to TF32)."""
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    ref = a.astype(np.float64) @ a.astype(np.float64)
    got = np.asarray(jax.jit(lambda a: a @ a)(jnp.asarray(a)), np.float64)
    env = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(), "jax": jax.__version__,
           "host": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "date": str(datetime.date.today()),
           "fp32_matmul_rel_error": float(np.linalg.norm(got - ref) / np.linalg.norm(ref))}
    try:
        import diffusers
        import torch
        env.update(torch=torch.__version__, diffusers=diffusers.__version__)
    except ImportError:
        pass
    return env


def config_for(name: str, dtype: str, tiny: bool, attention: str = "xla"):
    config = model_config(name, "tiny" if tiny else "gpu")
    config.train.compute_dtype = dtype
    config.model.attention_implementation = attention
    return config


def ours(name: str, dtype: str, batches: dict, tiny: bool, attention: str = "xla", sample: bool = True,
         profile_dir=None, windows: int = 3, seconds: float = 1.0, out: Optional[dict] = None) -> dict:
    """Our train step (and, with ``sample``, the DDIM-50 trajectory) for one model and compute dtype;
    each figure goes into ``out`` as it is measured (a later failure keeps the earlier ones)."""
    out = {} if out is None else out
    config = config_for(name, dtype, tiny, attention)
    B = batches["train"]
    start = time.perf_counter()
    compiled, state, batch, flops, device_bytes = compiled_train_step(config, B)
    out.update(train_batch=B, train_compile_s=time.perf_counter() - start, train_flops_per_img=flops / B,
               train_state_and_step_gib=device_bytes / 2 ** 30)
    out["train_img_s"], state = train_rate(compiled, state, batch, windows, seconds)
    if profile_dir is not None:
        out["profile"], state = profile_train_step(compiled, state, batch, profile_dir)
    model, schedule = build.make_model(config), build.make_schedule(config)
    out["fwd_flops_per_img"] = forward_flops(config, model, state.ema_params)
    if sample:
        params, S = state.ema_params, batches["ddim"]
        x_T = jax.random.normal(jax.random.key(0), (S,) + build.data_shape(config))
        start = time.perf_counter()
        draw = trajectory(config, model, schedule, "ddim", 50).lower(params, x_T).compile()
        out.update(ddim_batch=S, ddim_compile_s=time.perf_counter() - start,
                   ddim_img_s=median_rate(lambda: draw(params, x_T).block_until_ready(), S, windows, seconds))
    return out


def ours_ddpm(name: str, dtype: str, batch: int, tiny: bool) -> dict:
    config = config_for(name, dtype, tiny)
    model, schedule = build.make_model(config), build.make_schedule(config)
    params = build.init_params(model, config, jax.random.key(0))
    x_T = jax.random.normal(jax.random.key(0), (batch,) + build.data_shape(config))
    draw = trajectory(config, model, schedule, "ddpm", schedule.num_steps).lower(params, x_T).compile()
    return {"ddpm_batch": batch, "ddpm_img_s": once_rate(lambda: draw(params, x_T).block_until_ready(), batch)}


def attention_agreement(name: str, tiny: bool) -> dict:
    """Relative difference of one bf16 forward pass with cuDNN's fused attention against XLA's."""
    outs = []
    for attention in ("xla", "cudnn"):
        config = config_for(name, "bfloat16", tiny, attention)
        model = build.make_model(config)
        params = build.init_params(model, config, jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (8,) + build.data_shape(config))
        t = jnp.full((8,), 500, jnp.int32)
        cond = build.conditioning(config, jnp.zeros((8,), jnp.int32)) or {}
        outs.append(np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, t, **cond))(params, x), np.float64))
    return {"cudnn_vs_xla_rel": float(np.linalg.norm(outs[1] - outs[0]) / np.linalg.norm(outs[0]))}


def peer(name: str, batches: dict, gpu: bool, tiny: bool, sample: bool = True, windows: int = 3,
         seconds: float = 1.0, out: Optional[dict] = None) -> dict:
    """The peer's train step (and DDIM-50), filling ``out`` as ``ours`` does."""
    out = {} if out is None else out
    p = Peer(model_config(name, "tiny" if tiny else "gpu"), gpu)
    p.reset_peak_memory()
    out["train_img_s"] = p.train_rate(batches["train"], windows, seconds)
    if gpu:
        out["train_peak_gib"] = p.peak_memory_gb()
    if sample:
        out["ddim_img_s"] = p.sample_rate(batches["ddim"], 50, True, windows, seconds)
    return out


def peer_ddpm(name: str, batch: int, gpu: bool, tiny: bool) -> dict:
    p = Peer(model_config(name, "tiny" if tiny else "gpu"), gpu)
    p.sampler(batch, 2, False)()             # compiles the forward at this batch
    sample = p.sampler(batch, len(p.alphas), False)
    start = time.perf_counter()
    sample()
    return {"ddpm_img_s": batch / (time.perf_counter() - start)}


def profile_train_step(compiled, state, batch, directory, steps: int = 10):
    """(summary, state after): device time per kernel over ``steps`` train steps, from a
    ``jax.profiler`` trace: the 25 costliest kernels and the share of the step's device time by kind
    (convolution, matrix product, fusion, copy/transpose, reduction, other)."""
    with jax.profiler.trace(str(directory)):
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        metrics["loss"].block_until_ready()
    from jax.profiler import ProfileData
    paths = sorted(Path(directory).rglob("*.xplane.pb"))
    data = ProfileData.from_file(str(paths[-1]))
    per_kernel = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            for event in line.events:
                per_kernel[event.name] += event.duration_ns
    total = sum(per_kernel.values())
    kinds = collections.Counter()
    for name, ns in per_kernel.items():
        kinds[kernel_kind(name)] += ns
    summary = {"steps": steps, "device_ms_per_step": total / 1e6 / steps, "trace": str(paths[-1]),
               "by_kind": {k: v / total for k, v in kinds.most_common()} if total else {},
               "top": [(n, ns / 1e6 / steps) for n, ns in per_kernel.most_common(25)]}
    return summary, state


def kernel_kind(name: str) -> str:
    n = name.lower()
    for kind, marks in (("convolution", ("conv", "cudnn", "xmma_fprop", "xmma_dgrad", "xmma_wgrad", "implicit")),
                        ("matrix product", ("gemm", "cublas", "sm90_xmma", "triton_gemm", "wgmma")),
                        ("copy/transpose", ("copy", "transpose", "memcpy", "memset")),
                        ("reduction", ("reduce",)),
                        ("fusion", ("fusion", "loop_", "input_"))):
        if any(m in n for m in marks):
            return kind
    return "other"


def bf16_training_check(steps: int, batch: int, tiny: bool) -> dict:
    """MNIST losses of float32 (seeds 0 and 1) and bfloat16 (seed 0) runs over the same batches, and
    DDIM-50 samples of the float32 seed-0 model drawn with float32 and with bfloat16 compute."""
    train, _ = build.load_data(mnist.get_config())
    stream = pipeline.step_batches(pipeline.ArraySource.from_split(train), global_batch=batch, seed=0,
                                   shard=grain.sharding.NoSharding())
    losses, trained = {}, {}
    for run, (dtype, seed) in {"float32": ("float32", 0), "float32_seed1": ("float32", 1),
                               "bfloat16": ("bfloat16", 0)}.items():
        config = mnist.get_config()
        config.train.compute_dtype = dtype
        if tiny:
            config.model.base_channels, config.model.channel_mult = 8, (1, 2)
            config.model.norm_groups, config.model.attention_resolutions = 4, (14,)
        key = jax.random.key(seed)
        compiled, state, batch_example, _, _ = compiled_train_step(config, batch, key)
        history = []
        for step in range(steps):
            images = datasets.to_model_range(stream[step]["image"])
            state, metrics = compiled(state, {"image": jnp.asarray(images), "label": batch_example["label"]})
            history.append(metrics["loss"])
        losses[run] = np.asarray(jax.device_get(history), np.float64)
        trained[run] = (config, state.params)
    tail = max(1, steps // 3)
    mean = lambda r: float(losses[r][-tail:].mean())
    stderr = lambda r: float(losses[r][-tail:].std(ddof=1) / np.sqrt(tail)) if tail > 1 else 0.0
    out = {"steps": steps, "batch": batch, "tail": tail,
           "losses": {r: [float(v) for v in losses[r]] for r in losses},
           "tail_mean": {r: mean(r) for r in losses}, "tail_stderr": {r: stderr(r) for r in losses},
           "bf16_minus_fp32": mean("bfloat16") - mean("float32"),
           "fp32_seed1_minus_fp32": mean("float32_seed1") - mean("float32")}
    config, params = trained["float32"]
    samples = {}
    for dtype in ("float32", "bfloat16"):
        run_config = config.copy_and_resolve_references()
        run_config.train.compute_dtype = dtype
        model, schedule = build.make_model(run_config), build.make_schedule(run_config)
        x_T = jax.random.normal(jax.random.key(7), (256,) + build.data_shape(run_config))
        samples[dtype] = np.asarray(trajectory(run_config, model, schedule, "ddim", 50)(params, x_T), np.float64)
        eps = model.apply({"params": params}, x_T, jnp.full((256,), 500, jnp.int32))
        samples[dtype + "_eps"] = np.asarray(eps, np.float64)
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
    levels = np.abs(datasets.to_uint8(samples["bfloat16"]).astype(int) - datasets.to_uint8(samples["float32"]))
    out.update(one_forward_rel=rel(samples["bfloat16_eps"], samples["float32_eps"]),
               ddim50_rel=rel(samples["bfloat16"], samples["float32"]),
               pixels_beyond_one_level=float((levels > 1).mean()), max_levels=int(levels.max()))
    return out


def run_suite(budget_s: float, json_path: Path, tiny: bool = False, with_peer: bool = True, only=()) -> dict:
    gpu = jax.default_backend() == "gpu"
    plan = TINY_PLAN if tiny else PLAN
    budget = Budget(budget_s)
    results = {"budget_s": budget_s, "items": {}, "skipped": [], "errors": {}}
    trace_dir = Path(tempfile.mkdtemp(prefix="trace_"))

    def item(name: str, reserve: float, fn, *args, **kwargs):
        if only and not any(name.startswith(o) for o in only):
            return
        if not budget.allows(reserve):
            results["skipped"].append(name)
            print(f"[{budget.elapsed():6.1f} s] skipped {name} (needs ~{reserve:.0f} s)", flush=True)
            return
        start, partial = time.perf_counter(), {}
        if "out" in inspect.signature(fn).parameters:     # it records each figure as it is measured
            kwargs = dict(kwargs, out=partial)
        try:
            results["items"][name] = dict(fn(*args, **kwargs), seconds=time.perf_counter() - start)
            print(f"[{budget.elapsed():6.1f} s] {name}: {short(results['items'][name])}", flush=True)
        except Exception:
            results["errors"][name] = traceback.format_exc()
            if partial:      # what was measured before the failure
                results["items"][name] = dict(partial, seconds=time.perf_counter() - start, partial=True)
            print(f"[{budget.elapsed():6.1f} s] {name} FAILED:\n{results['errors'][name]}", flush=True)
        json_path.write_text(json.dumps(results, indent=1))

    # Reserves (seconds an item needs on an H200, compilation included) decide what still starts.
    item("environment", 0, environment)
    item("peak", 0, lambda: {"bf16_flops": peak_flops(256 if tiny else 8192, jnp.bfloat16),
                             "fp32_flops": peak_flops(256 if tiny else 8192, jnp.float32)})
    item("ours/cifar10/bfloat16", 60, ours, "cifar10", "bfloat16", plan["cifar10"], tiny, profile_dir=trace_dir)
    if with_peer:
        item("peer/cifar10/bf16-autocast", 90, peer, "cifar10", plan["cifar10"], gpu, tiny)
    item("ours/cifar10/float32", 50, ours, "cifar10", "float32", plan["cifar10"], tiny, sample=False)
    item("bf16_check/mnist", 50, bf16_training_check, 10 if tiny else BF16_STEPS, 8 if tiny else 128, tiny)
    item("ours/adm64/bfloat16", 90, ours, "adm64", "bfloat16", plan["adm64"], tiny)
    if with_peer:
        item("peer/adm64/bf16-autocast", 70, peer, "adm64", plan["adm64"], gpu, tiny, sample=False)
    if gpu:       # cuDNN's fused attention exists only there
        item("attention/adm64", 40, attention_agreement, "adm64", tiny)
        item("ours/adm64/bfloat16-cudnn-attention", 70, ours, "adm64", "bfloat16", plan["adm64"], tiny, "cudnn",
             sample=False)
    item("ours/adm64/float32", 70, ours, "adm64", "float32", plan["adm64"], tiny, sample=False)
    item("ours/cifar10/bfloat16/ddpm", 40, ours_ddpm, "cifar10", "bfloat16", plan["cifar10"]["ddpm"], tiny)
    if with_peer:
        item("peer/cifar10/ddpm", 40, peer_ddpm, "cifar10", plan["cifar10"]["ddpm"], gpu, tiny)
    traces = sorted(trace_dir.rglob("*.xplane.pb"))
    if traces and traces[-1].stat().st_size < 15 * 2 ** 20:    # small enough to come back from a lease
        shutil.copy(traces[-1], json_path.parent / "cifar10_bf16_train_step.xplane.pb")
    results["elapsed_s"] = budget.elapsed()
    json_path.write_text(json.dumps(results, indent=1))
    return results


def short(record: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                     if not isinstance(v, (dict, list)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run")
    parser.add_argument("--json", default="gpu_results.json", help="where every result is written as it comes")
    parser.add_argument("--tiny", action="store_true", help="shrunken models and batches (checks the script on CPU)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated item names (or prefixes) to run")
    parser.add_argument("--report", default=None, help="render this saved results file instead of running")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    results = run_suite(args.budget, Path(args.json), tiny=args.tiny, with_peer=not args.no_peer,
                        only=tuple(o for o in args.only.split(",") if o))
    print(report(results))


def report(results: dict) -> str:
    """The markdown section for benchmarks/RESULTS.md from a saved run."""
    items, env = results["items"], results["items"].get("environment", {})
    peak = items.get("peak", {}).get("bf16_flops", float("nan"))
    lines = [f"## gpu suite, {env.get('date', '?')}", "",
             f"Device: {env.get('device')} ×{env.get('devices')} ({env.get('host')}, {env.get('cpus')} CPU threads); "
             f"jax {env.get('jax')}, torch {env.get('torch', '–')}, diffusers {env.get('diffusers', '–')}. "
             f"Measured peak (bf16 8192² matmul, random data): {peak / 1e12:.0f} TFLOP/s; float32 8192²: "
             f"{items.get('peak', {}).get('fp32_flops', float('nan')) / 1e12:.0f} TFLOP/s (1024² float32 product's "
             f"error against float64: {env.get('fp32_matmul_rel_error', float('nan')):.1e}).",
             f"XLA_FLAGS: `{env.get('xla_flags', '')}`. Command: `python -m benchmarks.gpu` (budget "
             f"{results.get('budget_s')} s, {results.get('elapsed_s', float('nan')):.0f} s used).", "",
             "| model | compute | measure | batch | ours | peer (bf16 autocast) | ours / peer | ours: MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model in ("cifar10", "adm64"):
        peer_rec = items.get(f"peer/{model}/bf16-autocast", {})
        for variant in ("bfloat16", "bfloat16-cudnn-attention", "float32"):
            rec = items.get(f"ours/{model}/{variant}")
            if not rec:
                continue
            for key, flops_key, what, steps, batch_key in (
                    ("train_img_s", "train_flops_per_img", "train images/s", 1, "train_batch"),
                    ("ddim_img_s", "fwd_flops_per_img", "DDIM-50 images/s", 50, "ddim_batch")):
                if key not in rec:
                    continue
                mfu = rec[key] * rec[flops_key] * steps / peak
                theirs = peer_rec.get(key) if variant.startswith("bfloat16") else None
                lines.append(f"| {model} | {variant} | {what} | {rec[batch_key]} | {rec[key]:.1f} | "
                             f"{'–' if theirs is None else f'{theirs:.1f}'} | "
                             f"{'–' if theirs is None else f'{rec[key] / theirs:.2f}×'} | {100 * mfu:.1f}% |")
            theirs = peer_rec.get("train_peak_gib") if variant == "bfloat16" else None
            lines.append(f"| {model} | {variant} | train step memory (GiB) | {rec['train_batch']} | "
                         f"{rec['train_state_and_step_gib']:.1f} | {'–' if theirs is None else f'{theirs:.1f}'} | | |")
    ddpm = items.get("ours/cifar10/bfloat16/ddpm")
    if ddpm:
        mine, theirs = ddpm["ddpm_img_s"], items.get("peer/cifar10/ddpm", {}).get("ddpm_img_s")
        mfu = mine * items["ours/cifar10/bfloat16"]["fwd_flops_per_img"] * 1000 / peak if "ours/cifar10/bfloat16" in items else float("nan")
        lines.append(f"| cifar10 | bfloat16 | DDPM-1000 images/s | {ddpm['ddpm_batch']} | {mine:.2f} | "
                     f"{'–' if theirs is None else f'{theirs:.2f}'} | "
                     f"{'–' if theirs is None else f'{mine / theirs:.2f}×'} | {100 * mfu:.1f}% |")
    cifar = items.get("ours/cifar10/bfloat16")
    if cifar:
        lines += ["", f"DDIM-50 for {FID_IMAGES:,} CIFAR-10 images at the measured rate: "
                  f"{FID_IMAGES / cifar['ddim_img_s']:.0f} s (goal: under 120 s). Compile times: "
                  + ", ".join(f"{k.removeprefix('ours/')} {v['train_compile_s']:.0f} s" for k, v in items.items()
                              if "train_compile_s" in v) + "."]
        if "profile" in cifar:
            prof = cifar["profile"]
            lines += ["", f"Profile of the CIFAR-10 bf16 train step ({prof['steps']} steps, "
                      f"{prof['device_ms_per_step']:.2f} ms of kernel time per step, against "
                      f"{1e3 * cifar['train_batch'] / cifar['train_img_s']:.2f} ms wall-clock): "
                      + ", ".join(f"{k} {100 * v:.0f}%" for k, v in prof["by_kind"].items()) + "."]
    check = items.get("bf16_check/mnist")
    if check:
        m, s = check["tail_mean"], check["tail_stderr"]
        lines += ["", f"bf16 numerics (MNIST U-Net, {check['steps']} steps at batch {check['batch']}, mean loss "
                  f"over the last {check['tail']} steps ± s.e.): float32 {m['float32']:.4f} ± {s['float32']:.4f}, "
                  f"bfloat16 {m['bfloat16']:.4f} ± {s['bfloat16']:.4f}, float32 with another seed "
                  f"{m['float32_seed1']:.4f} ± {s['float32_seed1']:.4f}. Samples of the float32-trained model "
                  f"under bf16 compute: one forward pass {check['one_forward_rel']:.1e} relative to float32, "
                  f"DDIM-50 samples {check['ddim50_rel']:.1e}, {100 * check['pixels_beyond_one_level']:.2f}% of "
                  f"pixels more than one 8-bit level apart (largest {check['max_levels']} levels)."]
    if "attention/adm64" in items:
        lines += ["", f"cuDNN fused attention against XLA's in one ADM bf16 forward pass: relative difference "
                  f"{items['attention/adm64']['cudnn_vs_xla_rel']:.1e}."]
    if results.get("skipped") or results.get("errors"):
        lines += ["", "Not measured in this run: " + ", ".join(
            [f"{n} (budget)" for n in results.get("skipped", [])] + [f"{n} (error)" for n in results.get("errors", {})])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
