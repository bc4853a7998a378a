"""Training and sampling throughput, ours against the PyTorch peer, with "% of limit":
``python -m benchmarks.run --suite cpu|tiny [--models mnist,cifar10] [--out benchmarks/RESULTS.md]``;
the GPU suite is ``python -m benchmarks.gpu`` (its own plan of models, precisions and checks).

Ours: the compiled ``train_step`` (Adam, clipping, EMA) and whole compiled trajectories (DDIM 50, DDPM
1000; the tiny suite's DDPM runs 50 respaced steps) of the Flax U-Net. The peer: diffusers
``UNet2DModel`` in the same layout (``google/ddpm-cifar10-32``, and that layout shrunk to the MNIST
config), trained with Adam, clipping and an EMA on the same batch and sampled with the same number of
steps; on CPU both run float32 on the same threads. Every rate is the median of timed windows after warm-up, with the device synchronised;
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

from configs import cifar10_ddpm, imagenet64_adm, mnist
from diffusion import reverse, samplers, training, xla_flags
from diffusion.models.cost import hlo_flops
from experiments import build

SUITES = {
    # Batch sizes and timed windows per suite. On CPU, DDPM 1000 runs on a small batch of the MNIST
    # model only: the 35.7M model needs minutes per image there.
    "cpu": {"train_batch": {"mnist": 64, "cifar10": 8}, "sample_batch": {"mnist": 64, "cifar10": 2},
            "ddpm_batch": {"mnist": 8}, "ddpm_steps": 1000, "windows": 3, "seconds": 2.0, "dtype": "float32", "peak": 2048},
    # --suite tiny: a shrunken U-Net and small batches, to check the script runs (the tests use it).
    "tiny": {"train_batch": {"mnist": 8, "cifar10": 8}, "sample_batch": {"mnist": 8, "cifar10": 8},
             "ddpm_batch": {"mnist": 8}, "ddpm_steps": 50, "windows": 1, "seconds": 0.1, "dtype": "float32", "peak": 256},
}
CONFIGS = {"mnist": mnist, "cifar10": cifar10_ddpm, "adm64": imagenet64_adm}


def model_config(name: str, suite_name: str):
    config = CONFIGS[name].get_config()
    config.model.dropout = 0.0
    if suite_name == "tiny":
        config.model.base_channels, config.model.channel_mult, config.model.norm_groups = 8, (1, 2), 4
        config.model.num_res_blocks, config.model.attention_resolutions = 1, (config.data.image_size // 2,)
        config.model.num_head_channels = min(config.model.num_head_channels, 8)
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


def compiled_train_step(config, batch_size: int, key=jax.random.key(0)):
    """(compiled step, state, batch, XLA's FLOPs per call, device bytes) of ``training.train_step``
    (Adam, clipping, EMA; the state donated) for ``config``'s model on a random batch. Compiled once
    ahead of time: the same executable gives the memory analysis and the timings; the FLOPs are the
    program's HLO count (``hlo_flops``)."""
    model, schedule = build.make_model(config), build.make_schedule(config)
    tx = build.make_optimizer(config)
    state = training.create_train_state(key, build.init_params(model, config, key), tx, schedule.num_steps)
    shape = build.data_shape(config)
    batch = {"image": jax.random.uniform(key, (batch_size,) + shape, minval=-1, maxval=1),
             "label": jnp.zeros((batch_size,), jnp.int32)}
    step = partial(training.train_step, apply_fn=model.apply, tx=tx, schedule=schedule,
                   loss_kwargs=build.loss_kwargs(config), ema_decay=config.ema.decay,
                   num_classes=config.model.num_classes)
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    return compiled, state, batch, hlo_flops(step, state, batch), executable_bytes(compiled)


def executable_bytes(compiled) -> int:
    """Device memory one call needs: arguments + outputs + temporaries, less what donation aliases."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def train_rate(compiled, state, batch, windows: int, seconds: float) -> tuple[float, training.TrainState]:
    """(images per second, the state after) of the compiled train step, its state carried from call to call."""
    box = [state]

    def train_once():
        box[0], metrics = compiled(box[0], batch)
        metrics["loss"].block_until_ready()
    rate = median_rate(train_once, batch["image"].shape[0], windows, seconds)
    return rate, box[0]


def trajectory(config, model, schedule, sampler: str, steps: int):
    """``draw(params, x_T) -> x_0``: a whole sampling trajectory, jitted (not yet compiled)."""
    step_fn, run_schedule, timesteps = build.make_sampler(config, schedule, sampler=sampler, steps=steps)
    labels = build.conditioning(config, jnp.zeros((1,), jnp.int32))

    def draw(params, x_T):
        cond = None if labels is None else {"labels": jnp.zeros((x_T.shape[0],), jnp.int32)}
        return samplers.sample(step_fn, build.make_denoiser(model, params), run_schedule, x_T, jax.random.key(1),
                               timesteps=timesteps, cond=cond)
    return jax.jit(draw)


def forward_flops(config, model, params) -> float:
    """XLA's FLOPs of one network evaluation per image (batch 8; counted without compiling)."""
    x = jnp.zeros((8,) + build.data_shape(config))
    cond = build.conditioning(config, jnp.zeros((8,), jnp.int32)) or {}
    return hlo_flops(lambda p, x, t: model.apply({"params": p}, x, t, **cond), params, x,
                     jnp.zeros((8,), jnp.int32)) / 8


def ours(name: str, suite_name: str) -> dict:
    suite = SUITES[suite_name]
    config = model_config(name, suite_name)
    config.train.compute_dtype = suite["dtype"]
    B = suite["train_batch"][name]
    compiled, state, batch, flops, _ = compiled_train_step(config, B)
    rate, state = train_rate(compiled, state, batch, suite["windows"], suite["seconds"])
    out = {"train_img_s": rate, "train_flops_per_img": flops / B}
    model, schedule = build.make_model(config), build.make_schedule(config)
    params = state.ema_params
    shape = build.data_shape(config)
    runs = {"ddim": ("ddim", 50, suite["sample_batch"][name])}
    if name in suite["ddpm_batch"]:
        runs["ddpm"] = ("ddpm", suite["ddpm_steps"], suite["ddpm_batch"][name])
    for label, (sampler, steps, S) in runs.items():
        x_T = jax.random.normal(jax.random.key(0), (S,) + shape)
        draw = trajectory(config, model, schedule, sampler, steps)
        out[f"{label}_img_s"] = median_rate(lambda: draw(params, x_T).block_until_ready(), S,
                                            windows=1 if sampler == "ddpm" else suite["windows"],
                                            min_seconds=suite["seconds"] / 2)
    out["solvers"] = solver_rates(config, model, schedule, params, suite["sample_batch"][name], suite)
    out["fwd_flops_per_img"] = forward_flops(config, model, params)
    return out


def diffusers_layout(config) -> dict:
    """``UNet2DModel`` keyword arguments for the U-Net a config describes: google/ddpm-cifar10-32's
    layout for Ho et al.'s configs; ADM's options (scale-shift norm, BigGAN up/down, 64-channel
    heads, class embedding, learned variance's extra channels) map onto their diffusers switches."""
    m, size = config.model, config.data.image_size
    levels = len(m.channel_mult)
    attn = [size // 2 ** i in m.attention_resolutions for i in range(levels)]
    return dict(sample_size=size, in_channels=config.data.channels,
                out_channels=reverse.output_channels(config.data.channels, config.diffusion.variance),
                block_out_channels=tuple(m.base_channels * k for k in m.channel_mult),
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                layers_per_block=m.num_res_blocks,
                attention_head_dim=m.num_head_channels if m.num_head_channels > 0 else None, norm_eps=1e-6,
                norm_num_groups=m.norm_groups, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                resnet_time_scale_shift="scale_shift" if m.scale_shift_norm else "default",
                downsample_type="resnet" if m.resblock_updown else "conv",
                upsample_type="resnet" if m.resblock_updown else "conv",
                num_class_embeds=(m.num_classes + 1) if m.num_classes > 0 else None)


class Peer:
    """diffusers' ``UNet2DModel`` in ``config``'s layout, trained (Adam, clipping 1.0, EMA) and sampled
    like ours. On GPU: bf16 autocast over float32 parameters, channels_last, ``torch.compile`` (one
    static graph per batch shape), fused Adam; on CPU: float32 eager on the same threads as XLA."""

    def __init__(self, config, gpu: bool):
        import diffusers
        import torch
        self.torch, self.config, self.gpu = torch, config, gpu
        self.device = "cuda" if gpu else "cpu"
        net = diffusers.UNet2DModel(**diffusers_layout(config)).to(self.device)
        if gpu:
            torch._dynamo.config.automatic_dynamic_shapes = False   # each batch shape its own static graph
            net = net.to(memory_format=torch.channels_last)
        self.net, self.fwd = net, torch.compile(net) if gpu else net
        self.params = [p for p in net.parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.Adam(self.params, lr=2e-4, fused=gpu)
        self.autocast = lambda: torch.autocast(self.device, dtype=torch.bfloat16, enabled=gpu)
        self.sync = torch.cuda.synchronize if gpu else (lambda: None)
        self.alphas = torch.tensor(np.asarray(build.make_schedule(config).alphas_cumprod), device=self.device)
        self.C, self.H = config.data.channels, config.data.image_size

    def _labels(self, n: int):
        if self.config.model.num_classes == 0:
            return None
        return self.torch.zeros((n,), dtype=self.torch.long, device=self.device)

    def _images(self, n: int):
        x = self.torch.randn(n, self.C, self.H, self.H, device=self.device)
        return x.to(memory_format=self.torch.channels_last) if self.gpu else x

    def train_rate(self, B: int, windows: int, seconds: float) -> float:
        torch = self.torch
        x0, labels = self._images(B).clamp(-1, 1), self._labels(B)

        def train_once():
            t = torch.randint(0, len(self.alphas), (B,), device=self.device)
            noise = torch.randn_like(x0)
            a = self.alphas[t].view(-1, 1, 1, 1).float()
            with self.autocast():
                pred = self.fwd(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, class_labels=labels).sample
            loss = torch.nn.functional.mse_loss(pred[:, :self.C].float(), noise)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
            self.opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, self.params, 1 - 0.9999)
            self.sync()
        return median_rate(train_once, B, windows, seconds)

    def sampler(self, S: int, steps: int, ddim: bool):
        """``sample()``: one DDIM (η = 0) or ancestral (fixed-large variance) trajectory of ``steps``
        evenly spaced steps for ``S`` images, x̂_0 clipped to [−1, 1], as ours; synchronised."""
        torch = self.torch
        labels = self._labels(S)

        @torch.no_grad()
        def sample():
            ts = np.linspace(0, len(self.alphas) - 1, steps).round().astype(int)[::-1]
            x = self._images(S)
            for i, t in enumerate(ts):
                a_t = self.alphas[t]
                a_prev = self.alphas[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=self.device)
                with self.autocast():
                    eps = self.fwd(x, torch.full((S,), int(t), device=self.device), class_labels=labels).sample
                eps = eps[:, :self.C].float()
                x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
                if ddim:
                    x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
                else:   # ancestral step with fixed-large variance β_t (respaced: β_t = 1 − ᾱ_t/ᾱ_prev)
                    beta = 1 - a_t / a_prev
                    mean = (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * x) / (1 - a_t)
                    x = mean + (beta.sqrt() * torch.randn_like(x) if i + 1 < len(ts) else 0)
            self.sync()
        return sample

    def sample_rate(self, S: int, steps: int, ddim: bool, windows: int, seconds: float) -> float:
        return median_rate(self.sampler(S, steps, ddim), S, windows, seconds)

    def peak_memory_gb(self) -> float:
        return self.torch.cuda.max_memory_allocated() / 2 ** 30

    def reset_peak_memory(self):
        if self.gpu:
            self.torch.cuda.reset_peak_memory_stats()


def peer(name: str, suite_name: str) -> dict:
    """The peer on the CPU suites (``benchmarks.gpu`` times it on a GPU)."""
    suite = SUITES[suite_name]
    p = Peer(model_config(name, suite_name), gpu=False)
    out = {"train_img_s": p.train_rate(suite["train_batch"][name], suite["windows"], suite["seconds"])}
    out["ddim_img_s"] = p.sample_rate(suite["sample_batch"][name], 50, True, suite["windows"], suite["seconds"] / 2)
    if name in suite["ddpm_batch"]:
        out["ddpm_img_s"] = p.sample_rate(suite["ddpm_batch"][name], suite["ddpm_steps"], False, 1,
                                          suite["seconds"] / 2)
    return out


SOLVER_NFE = 20      # the fast samplers are timed at this many network evaluations each
SOLVERS = ("ddim", "dpmpp_2m", "dpm_solver_2", "dpm_solver_3", "heun", "euler_ancestral")


def solver_rates(config, model, schedule, params, batch: int, suite: dict) -> dict:
    """Per sampler of ``SOLVERS``, at most ``SOLVER_NFE`` network evaluations: (NFE, images/s) of the
    whole compiled trajectory, so the solvers' own arithmetic shows beside the network's cost."""
    x_T = jax.random.normal(jax.random.key(0), (batch,) + build.data_shape(config))
    rates = {}
    for name in SOLVERS:
        steps = samplers.steps_within(name, schedule, SOLVER_NFE)
        draw = trajectory(config, model, schedule, name, steps)
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
    return "\n".join(lines)


def main():
    xla_flags.use_xla_cpu_convolutions()   # before jax.default_backend() starts the backend
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    parser.add_argument("--models", default="mnist,cifar10")
    parser.add_argument("--no-peer", action="store_true", help="time ours only (no PyTorch installed)")
    parser.add_argument("--out", default=None, help="append the table to this markdown file")
    args = parser.parse_args()
    suite = SUITES[args.suite]
    peak = peak_flops(suite["peak"], jnp.float32)
    if not args.no_peer:
        import torch
        torch.set_num_threads(os.cpu_count())   # the same threads as XLA:CPU
    rows = []
    for name in args.models.split(","):
        print(f"timing {name} ...", flush=True)
        rows.append({"name": name, "ours": ours(name, args.suite),
                     "peer": None if args.no_peer else peer(name, args.suite)})
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
              f"(fp32 {suite['peak']}² matmul): {peak / 1e9:.1f} GFLOP/s.\n"
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
