"""Training and sampling throughput, ours against the PyTorch peer, with "% of limit":
``python -m benchmarks.run --suite cpu|gpu [--models mnist,cifar10] [--out benchmarks/RESULTS.md]``.

Ours: the compiled ``train_step`` (Adam, EMA) and whole compiled trajectories (DDIM 50, DDPM 1000; the tiny suite's DDPM
runs 50 respaced steps)
of the Flax U-Net. The peer: diffusers ``UNet2DModel`` in the same layout (``google/ddpm-cifar10-32``,
and that layout shrunk to the MNIST config), trained with Adam on the same batch and sampled with the
same number of steps. On GPU each side gets its best settings (ours: bfloat16 compute with float32
parameters; the peer: bf16 autocast, channels_last, ``torch.compile``); on CPU both run float32 on the
same threads. Every rate is the median of timed windows after warm-up, with the device synchronised;
achieved FLOP/s is XLA's FLOP count × rate, and "% of limit" divides it by a large matrix product
timed in the same run.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from configs import cifar10_ddpm, mnist
from diffusion import samplers, training, xla_flags
from diffusion.models.cost import compiled_flops
from experiments import common

SUITES = {
    # Batch sizes and timed windows per suite. On CPU, DDPM 1000 runs on a small batch of the MNIST
    # model only: the 35.7M model needs minutes per image there.
    "cpu": {"train_batch": {"mnist": 64, "cifar10": 8}, "sample_batch": {"mnist": 64, "cifar10": 2},
            "ddpm_batch": {"mnist": 8}, "ddpm_steps": 1000, "windows": 3, "seconds": 2.0, "dtype": "float32", "peak": 2048},
    "gpu": {"train_batch": {"mnist": 256, "cifar10": 128}, "sample_batch": {"mnist": 1000, "cifar10": 1000},
            "ddpm_batch": {"mnist": 1000, "cifar10": 1000}, "ddpm_steps": 1000,
            "windows": 5, "seconds": 2.0, "dtype": "bfloat16", "peak": 8192},
    # --suite tiny: a shrunken U-Net and small batches, to check the script runs (the tests use it).
    "tiny": {"train_batch": {"mnist": 8, "cifar10": 8}, "sample_batch": {"mnist": 8, "cifar10": 8},
             "ddpm_batch": {"mnist": 8}, "ddpm_steps": 50, "windows": 1, "seconds": 0.1, "dtype": "float32", "peak": 256},
}
CONFIGS = {"mnist": mnist, "cifar10": cifar10_ddpm}


def model_config(name: str, suite_name: str):
    config = CONFIGS[name].get_config()
    config.model.dropout = 0.0
    if suite_name == "tiny":
        config.model.base_channels, config.model.channel_mult, config.model.norm_groups = 8, (1, 2), 4
        config.model.num_res_blocks, config.model.attention_resolutions = 1, (config.data.image_size // 2,)
    return config


def median_rate(fn, work: float, windows: int, min_seconds: float) -> float:
    """Work units per second: median over ``windows`` windows of repeated calls (each ≥ min_seconds)."""
    fn()                                                    # warm-up (compilation)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < min_seconds / 4 or calls == 0:
        fn()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    reps = max(1, int(min_seconds / per_call))
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        rates.append(work * reps / (time.perf_counter() - start))
    return statistics.median(rates)


def peak_flops(size: int, dtype) -> float:
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    return median_rate(lambda: matmul(a, a).block_until_ready(), 2 * size ** 3, windows=3, min_seconds=1.0)


def ours(name: str, suite_name: str) -> dict:
    suite = SUITES[suite_name]
    config = model_config(name, suite_name)
    config.train.compute_dtype = suite["dtype"]
    model, schedule = common.make_model(config), common.make_schedule(config)
    tx = common.make_optimizer(config)
    key = jax.random.key(0)
    state = training.create_train_state(key, common.init_params(model, config, key), tx, schedule.num_steps)
    B = suite["train_batch"][name]
    shape = common.data_shape(config)
    batch = {"image": jax.random.uniform(key, (B,) + shape, minval=-1, maxval=1), "label": jnp.zeros((B,), jnp.int32)}
    step = partial(training.train_step, apply_fn=model.apply, tx=tx, schedule=schedule,
                   loss_kwargs=common.loss_kwargs(config), ema_decay=config.ema.decay)
    train_flops = compiled_flops(step, state, batch)
    step = jax.jit(step, donate_argnums=0)
    box = [state]

    def train_once():
        box[0], metrics = step(box[0], batch)
        metrics["loss"].block_until_ready()
    out = {"train_img_s": median_rate(train_once, B, suite["windows"], suite["seconds"]),
           "train_flops_per_img": train_flops / B}
    if jax.devices()[0].platform == "gpu":
        out["peak_mem_gb"] = jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2 ** 30
    params = box[0].ema_params
    runs = {"ddim": ("ddim", 50, suite["sample_batch"][name])}
    if name in suite["ddpm_batch"]:
        runs["ddpm"] = ("ddpm", suite["ddpm_steps"], suite["ddpm_batch"][name])
    for label, (sampler, steps, S) in runs.items():
        x_T = jax.random.normal(key, (S,) + shape)
        step_fn, run_schedule, timesteps = common.make_sampler(config, schedule, sampler=sampler, steps=steps)
        draw = jax.jit(lambda p, x: samplers.sample(step_fn, common.make_denoiser(model, p), run_schedule, x,
                                                    jax.random.key(1), timesteps=timesteps))
        out[f"{label}_img_s"] = median_rate(lambda: draw(params, x_T).block_until_ready(), S,
                                            windows=1 if sampler == "ddpm" else suite["windows"],
                                            min_seconds=suite["seconds"] / 2)
    out["solvers"] = solver_rates(config, model, schedule, params, suite["sample_batch"][name], suite)
    x = jnp.zeros((8,) + shape)
    out["fwd_flops_per_img"] = compiled_flops(lambda p, x, t: model.apply({"params": p}, x, t), params, x,
                                              jnp.zeros((8,), jnp.int32)) / 8
    return out


def diffusers_layout(config) -> dict:
    """``UNet2DModel`` keyword arguments for the DDPM U-Net a config describes (google/ddpm-cifar10-32 style)."""
    m, size = config.model, config.data.image_size
    levels = len(m.channel_mult)
    attn = [size // 2 ** i in m.attention_resolutions for i in range(levels)]
    return dict(sample_size=size, in_channels=config.data.channels, out_channels=config.data.channels,
                block_out_channels=tuple(m.base_channels * k for k in m.channel_mult),
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                layers_per_block=m.num_res_blocks, attention_head_dim=None, norm_eps=1e-6,
                norm_num_groups=m.norm_groups, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1)


def peer(name: str, suite_name: str, gpu: bool) -> dict:
    import diffusers
    import torch
    suite = SUITES[suite_name]
    config = model_config(name, suite_name)
    device = "cuda" if gpu else "cpu"
    net = diffusers.UNet2DModel(**diffusers_layout(config)).to(device)
    if gpu:
        net = net.to(memory_format=torch.channels_last)
    fwd = torch.compile(net) if gpu else net
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    B, C, H = suite["train_batch"][name], config.data.channels, config.data.image_size
    x0 = torch.rand(B, C, H, H, device=device) * 2 - 1
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=gpu)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    alphas = torch.tensor(np.asarray(common.make_schedule(config).alphas_cumprod), device=device)

    def train_once():
        t = torch.randint(0, 1000, (B,), device=device)
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        with autocast:
            pred = fwd(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    out = {"train_img_s": median_rate(train_once, B, suite["windows"], suite["seconds"])}
    if gpu:
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    @torch.no_grad()
    def sample(S: int, steps: int, ddim: bool):
        ts = np.linspace(0, 999, steps).round().astype(int)[::-1]
        x = torch.randn(S, C, H, H, device=device)
        for i, t in enumerate(ts):
            a_t = alphas[t]
            a_prev = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=device)
            with autocast:
                eps = fwd(x, torch.full((S,), int(t), device=device)).sample.float()
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            if ddim:
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            else:   # ancestral step with fixed-large variance β_t (respaced: β_t = 1 − ᾱ_t/ᾱ_prev)
                beta = 1 - a_t / a_prev
                mean = (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * x) / (1 - a_t)
                x = mean + (beta.sqrt() * torch.randn_like(x) if i + 1 < len(ts) else 0)
        sync()
    S = suite["sample_batch"][name]
    out["ddim_img_s"] = median_rate(lambda: sample(S, 50, True), S, suite["windows"], suite["seconds"] / 2)
    if name in suite["ddpm_batch"]:
        S = suite["ddpm_batch"][name]
        out["ddpm_img_s"] = median_rate(lambda: sample(S, suite["ddpm_steps"], False), S, 1, suite["seconds"] / 2)
    return out


SOLVER_NFE = 20      # the fast samplers are timed at this many network evaluations each
SOLVERS = ("ddim", "dpmpp_2m", "dpm_solver_2", "dpm_solver_3", "heun", "euler_ancestral")


def solver_rates(config, model, schedule, params, batch: int, suite: dict) -> dict:
    """Per sampler of ``SOLVERS``, at most ``SOLVER_NFE`` network evaluations: (NFE, images/s) of the
    whole compiled trajectory, so the solvers' own arithmetic shows beside the network's cost."""
    x_T = jax.random.normal(jax.random.key(0), (batch,) + common.data_shape(config))
    rates = {}
    for name in SOLVERS:
        steps = samplers.steps_within(name, schedule, SOLVER_NFE)
        step_fn, run_schedule, timesteps = common.make_sampler(config, schedule, sampler=name, steps=steps)
        draw = jax.jit(lambda p, x, step_fn=step_fn, run_schedule=run_schedule, timesteps=timesteps: samplers.sample(
            step_fn, common.make_denoiser(model, p), run_schedule, x, jax.random.key(1), timesteps=timesteps))
        rates[name] = (samplers.network_evaluations(name, schedule, steps),
                       median_rate(lambda: draw(params, x_T).block_until_ready(), batch, suite["windows"],
                                   suite["seconds"] / 2))
    return rates


def solver_table(rows: list[dict]) -> str:
    """Images/s of each fast sampler at (at most) ``SOLVER_NFE`` evaluations, and its time per
    network evaluation relative to DDIM's (1.00×: the solver adds nothing to the network's cost)."""
    lines = ["| model | sampler | NFE | images/s | time per NFE vs DDIM |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        solvers = r["ours"]["solvers"]
        ddim_nfe, ddim_rate = solvers["ddim"]
        for name, (nfe, rate) in solvers.items():
            lines.append(f"| {r['name']} | {name} | {nfe} | {rate:.2f} | {(ddim_rate * ddim_nfe) / (rate * nfe):.2f}× |")
    return "\n".join(lines)


def table(rows: list[dict], peak: float, ddpm_steps: int) -> str:
    lines = ["| model | measure | ours | peer (PyTorch) | ours / peer | ours: achieved FLOP/s (% of limit) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        o, p = r["ours"], r.get("peer") or {}
        for key, flops_key, what in (("train_img_s", "train_flops_per_img", "train images/s"),
                                     ("ddim_img_s", "fwd_flops_per_img", "DDIM-50 images/s"),
                                     ("ddpm_img_s", "fwd_flops_per_img", f"DDPM-{ddpm_steps} images/s")):
            if key not in o:
                continue
            steps = {"train_img_s": 1, "ddim_img_s": 50, "ddpm_img_s": ddpm_steps}[key]
            achieved = o[key] * o[flops_key] * steps
            ratio = f"{o[key] / p[key]:.2f}×" if key in p else "–"
            peer_value = f"{p[key]:.2f}" if key in p else "–"
            lines.append(f"| {r['name']} | {what} | {o[key]:.2f} | {peer_value} | {ratio} | "
                         f"{achieved / 1e9:.1f} GFLOP/s ({100 * achieved / peak:.0f}%) |")
        if "peak_mem_gb" in o:
            lines.append(f"| {r['name']} | peak training memory (GiB) | {o['peak_mem_gb']:.2f} | "
                         f"{p.get('peak_mem_gb', float('nan')):.2f} | | |")
    return "\n".join(lines)


def main():
    xla_flags.use_xla_cpu_convolutions()   # before jax.default_backend() starts the backend
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="gpu" if jax.default_backend() == "gpu" else "cpu")
    parser.add_argument("--models", default="mnist,cifar10")
    parser.add_argument("--no-peer", action="store_true", help="time ours only (no PyTorch installed)")
    parser.add_argument("--out", default=None, help="append the table to this markdown file")
    args = parser.parse_args()
    suite = SUITES[args.suite]
    gpu = args.suite == "gpu"
    peak = peak_flops(suite["peak"], jnp.bfloat16 if gpu else jnp.float32)
    if not (gpu or args.no_peer):
        import torch
        torch.set_num_threads(os.cpu_count())   # the same threads as XLA:CPU
    rows = []
    for name in args.models.split(","):
        print(f"timing {name} ...", flush=True)
        rows.append({"name": name, "ours": ours(name, args.suite),
                     "peer": None if args.no_peer else peer(name, args.suite, gpu)})
    versions = f"jax {jax.__version__}"
    if not args.no_peer:
        import diffusers
        import torch
        versions += f", torch {torch.__version__}, diffusers {diffusers.__version__}"
    batches = ", ".join(f"{n}: train {suite['train_batch'][n]}, DDIM {suite['sample_batch'][n]}, "
                        f"DDPM {suite['ddpm_batch'].get(n, '–')}" for n in args.models.split(","))
    report = (f"## {args.suite} suite, {datetime.date.today()}\n\n"
              f"Device: {jax.devices()[0].device_kind} ×{jax.device_count()} ({platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPU threads); {versions}.\nBatches: {batches}; measured peak "
              f"({'bf16' if gpu else 'fp32'} {suite['peak']}² matmul): {peak / 1e9:.1f} GFLOP/s.\n"
              f"XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}`\n"
              f"Command: `python -m benchmarks.run --suite {args.suite} --models {args.models}`\n\n"
              + table(rows, peak, suite["ddpm_steps"]) + "\n\n"
              f"Fast samplers at ≤ {SOLVER_NFE} network evaluations (batch as DDIM's; whole compiled trajectories):\n\n"
              + solver_table(rows) + "\n")
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + report)


if __name__ == "__main__":
    main()
