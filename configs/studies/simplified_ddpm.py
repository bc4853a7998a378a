"""Seed 004's simplified DDPM as written: its objective (−log q_r on forward pairs, the SDDPM loss)
trains its three autoencoder reverse models (shallow, dense, convolutional, 30-unit code) at
β = 0.2, T = 50 on 28×28 digits, against Ho et al.'s L_simple on the same networks and the U-Net;
samples, FID, the seed's encode-then-decode pictures and its objective on held-out images.

python -m experiments.reproduce --study simplified_ddpm --workdir runs/studies/simplified_ddpm
"""
from configs.studies import base
from diffusion import metrics

NETWORKS = {    # row label -> model overrides
    "shallow AE": dict(kind="shallow_autoencoder"),
    "dense AE": dict(kind="dense_autoencoder"),
    "conv AE": dict(kind="conv_autoencoder"),
    "U-Net": dict(kind="unet"),
}
ARMS = {        # column label -> (loss, prediction, sampler)
    "SDDPM ε_r": ("sddpm", "residual", "sddpm"),     # the seed as written: mean x_t + ε_r(x_t, t)
    "SDDPM x̂_0": ("sddpm", "x0", "ddpm"),           # the seed's loss, Ho et al.'s mean μ̃(x̂_0, x_t)
    "Ho ε": ("simple", "eps", "ddpm"),
    "Ho x_0": ("simple", "x0", "ddpm"),
}
TEN_EPOCHS = 1406    # steps at batch 64 in ten passes over the 9,000 training images, the seed's budget
NAMES = {"shallow AE": "shallow", "dense AE": "dense", "conv AE": "conv", "U-Net": "unet",
         "SDDPM ε_r": "sddpm", "SDDPM x̂_0": "sddpm_x0", "Ho ε": "eps", "Ho x_0": "x0"}


def model(network: str, arm: str, epochs: int = 10) -> dict:
    loss, prediction, sampler = ARMS[arm]
    return dict(model=NETWORKS[network], train=dict(num_steps=TEN_EPOCHS * epochs // 10),
                diffusion=dict(schedule="constant", num_steps=50, loss=loss, prediction=prediction,
                               variance="fixed_large"),
                sample=dict(sampler=sampler, steps=50))


# (network, arm, epochs): every autoencoder under every arm; the convolutional one also for the seed's
# 30 epochs; the U-Net under the seed's objective and Ho et al.'s ε loss.
RUNS = ([(n, a, 10) for n in ("shallow AE", "dense AE", "conv AE") for a in ARMS]
        + [("conv AE", a, 30) for a in ("SDDPM ε_r", "SDDPM x̂_0")]
        + [("U-Net", a, 10) for a in ("SDDPM ε_r", "Ho ε")])


def name(network: str, arm: str, epochs: int) -> str:
    return f"{NAMES[network]}_{NAMES[arm]}" + ("_30ep" if epochs != 10 else "")


def row(network: str, epochs: int) -> str:
    return network + (f", {epochs} epochs" if epochs != 10 else "")


def get_config():
    s = base.get_config()
    s.title = "Seed 004's SDDPM: its objective and autoencoders, β = 0.2, T = 50"
    s.paper = ("seed 004 (CATSMILE-1024): the SDDPM objective Σ_t E[log q_r(x_t | x_{t+1})] on forward pairs with "
               "q_r's mean x_{t+1} + ε_r(x_{t+1}) ('SDDPM ε_r', sampled by its ancestral steps), shallow < dense < "
               "convolutional autoencoders expected; for comparison the same objective with Ho et al.'s mean "
               "μ̃(x̂_0, x_t) ('SDDPM x̂_0'), and Ho et al. (2020)'s L_simple predicting ε or x_0 ('Ho ε', 'Ho x_0'), "
               "these three sampled with ancestral DDPM steps (x̂_0 clipped to [−1, 1], and unclipped for the ε U-Net)")
    s.dataset = "mnist"
    s.models = {name(n, a, e): model(n, a, e) for n, a, e in RUNS}
    s.cells = tuple(dict(model=name(n, a, e), sampler=ARMS[a][2], steps=50, row=row(n, e), col=a) for n, a, e in RUNS)
    # Ho et al.'s sampler clips x̂_0 to [−1, 1]; the residual has no x̂_0 to clip, so the ε U-Net also without.
    s.cells += (dict(model="unet_eps", sampler="ddpm", steps=50, clip="none", row="U-Net", col="Ho ε unclipped"),)
    s.metrics = ("fid", "confident", "sddpm")
    s.plot = dict(x="col", y="fid", series="row", logx=False)
    s.encode_depths = (5, 10, 20, 50)
    s.num_samples = 500
    s.nll_examples = 256
    s.budget.train.num_steps = TEN_EPOCHS
    s.scale_note = (f"every model trains {TEN_EPOCHS:,} steps at batch 64, 10 epochs of the 9,000 training images as the "
                    "seed's pictures (its 30-epoch convolutional autoencoder 4,218), with Adam at 1e-3 and cosine "
                    "decay (the seed: 1e-4 on the full 60,000-image MNIST); the U-Net is the project's 16-channel one. "
                    "FID uses the project's MNIST classifier features on 500 samples per cell (its own scale); the seed "
                    "reports only pictures, so only its expected ordering is checked.")
    return s


def claims(results, nll):
    by = {(r["model"], r.get("clip")): r for r in results}
    row = lambda m, clip=None: by[(m, clip)]
    fid = lambda m, clip=None: metrics.fid_text(row(m, clip))
    objective = lambda m: f"{row(m)['sddpm_objective']:.3f} ± {row(m)['sddpm_objective_se']:.3f}"
    gain = lambda m: row(m)["sddpm_objective_identity"] - row(m)["sddpm_objective"]   # over ε_r = 0
    aes = ("shallow", "dense", "conv")
    out = []
    for arm, label in (("sddpm", "as written (residual mean)"), ("sddpm_x0", "with the x̂_0 mean")):
        names = [f"{n}_{arm}" for n in aes]
        fids, objs = [row(m)["fid"] for m in names], [row(m)["sddpm_objective"] for m in names]
        learned = (f"; the held-out objective lies only {min(map(gain, names)):.2f}–{max(map(gain, names)):.2f} "
                   f"nats/dim below that of ε_r = 0 (nothing learned), against "
                   f"{min(gain(f'{n}_sddpm_x0') for n in aes):.2f}–{max(gain(f'{n}_sddpm_x0') for n in aes):.2f} "
                   "with the x̂_0 mean: every sample is noise" if arm == "sddpm" else "")
        out.append((f"Under the SDDPM objective {label}, the samples improve from the shallow to the dense to the "
                    "convolutional autoencoder (FID)", fids[0] > fids[1] > fids[2],
                    "FID " + ", ".join(f"{n} {fid(m)}" for n, m in zip(aes, names)) + learned))
        out.append((f"… and so does the held-out SDDPM objective {label} (nats/dim, lower is better)",
                    objs[0] > objs[1] > objs[2], ", ".join(f"{n} {objective(m)}" for n, m in zip(aes, names))))
    for arm, label in (("sddpm", "as written"), ("sddpm_x0", "with the x̂_0 mean")):
        out.append((f"30 epochs improve the convolutional autoencoder over 10 under the seed's objective {label} (FID)",
                    row(f"conv_{arm}_30ep")["fid"] < row(f"conv_{arm}")["fid"],
                    f"FID {fid(f'conv_{arm}_30ep')} vs {fid(f'conv_{arm}')}"))
    better = [n for n in aes if row(f"{n}_sddpm_x0")["fid"] < row(f"{n}_x0")["fid"]]
    out.append(("With the same network and mean (x̂_0), the seed's objective draws better samples than Ho et al.'s "
                "L_simple (FID, every autoencoder)", len(better) == len(aes),
                "SDDPM vs L_simple: " + "; ".join(f"{n} {fid(f'{n}_sddpm_x0')} vs {fid(f'{n}_x0')}" for n in aes)))
    lower = [n for n in aes if row(f"{n}_sddpm_x0")["sddpm_objective"] < row(f"{n}_x0")["sddpm_objective"]]
    out.append(("… and reaches a lower held-out value of its own objective than L_simple does", len(lower) == len(aes),
                "; ".join(f"{n} {objective(f'{n}_sddpm_x0')} vs {objective(f'{n}_x0')}" for n in aes)))
    eps, sd = row("unet_eps"), row("unet_sddpm")
    out.append(("On the U-Net, the seed's objective as written fits the reverse step as well as Ho et al.'s ε loss "
                "(held-out SDDPM objective within 2 s.e.)",
                abs(sd["sddpm_objective"] - eps["sddpm_objective"])
                <= 2 * (sd["sddpm_objective_se"] ** 2 + eps["sddpm_objective_se"] ** 2) ** 0.5,
                f"{objective('unet_sddpm')} vs {objective('unet_eps')}"))
    out.append(("… and draws samples as good (FID within 2 s.e. of the ε model's, with or without its x̂_0 clipping)",
                sd["fid"] <= min(eps["fid"] + 2 * eps["fid_se"], row("unet_eps", "none")["fid"]
                                 + 2 * row("unet_eps", "none")["fid_se"]),
                f"FID {fid('unet_sddpm')} vs {fid('unet_eps')} clipped, {fid('unet_eps', 'none')} unclipped"))
    return out
