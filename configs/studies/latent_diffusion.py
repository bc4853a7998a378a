"""Latent diffusion (Rombach et al. 2022) on Fashion-MNIST: pixel diffusion (f = 1,
configs/fashion_mnist.py) against diffusion in the latents of KL-reg autoencoders at f = 2 and 4 and
a VQ-reg one at f = 4 (configs/latent/fashion_mnist_*.py), each U-Net given the same training
wall-clock on the 2-core CPU; FID of DDIM-50 samples, training and sampling images/s, each
autoencoder's PSNR and reconstruction FID, and the FID of its reconstructions of as many held-out
images as a cell has samples (the floor under its latent model's FID). The autoencoders
(configs/latent/autoencoder_*.py, here 2,500 steps each, half their configs' 5,000) train first, in
<workdir>/autoencoders. Sized to run in one sitting on a 2-core CPU, about two hours in all: the
autoencoders and U-Nets take most of it, sampling and measuring minutes (the report's commands).

python -m experiments.reproduce --study latent_diffusion --workdir runs/studies/latent_diffusion

On a GPU, ``--scale paper --dataset cifar10`` (or ``celeba64``, ``imagenet64``; TFDS) trains the
paper-size models instead (``paper_overrides``): LDM's first stages (configs/latent/autoencoder_ldm_*.py)
and LDM-4's U-Net on their latents against the dataset's pixel model, every U-Net with the pixel
model's recipe, so at equal steps and batch; ``--plan_only`` prints every command first.
"""
from flax import traverse_util

from configs import fashion_mnist
from configs.latent import fashion_mnist_kl_f2, fashion_mnist_kl_f4, fashion_mnist_vq_f4
from configs.studies import base
from diffusion import metrics

# Equal wall-clock is expressed as steps: every U-Net trains TRAIN_SECONDS × its steps/s, measured once
# (benchmarks.run's compiled train step of the study's 16-channel U-Net on random images or latents at
# batch 64, median of 3 windows of 8 s, on a 2-core CPU shared with another job; vq_f4 has
# kl_f4's U-Net and 8×8×3 latents, its quantiser being part of the decoder). Fixed steps keep a run
# resumable and its config (so the checkpoint check) the same on a rerun, which a time limit read off
# the clock would not; the report shows the images/s each run really logged beside them. Latents are
# encoded once before training (autoencoder_runs.latent_training_data, 26 s for kl_f4), outside the budget, as
# LDM trains on a fixed first stage; per-step host work (batching, logging) is not in the rates.
TRAIN_SECONDS = 900
AUTOENCODER_STEPS = 2500
STEPS_PER_S = {"pixel": 2.20, "kl_f2": 6.01, "kl_f4": 23.93, "vq_f4": 23.93}
# model name -> (latent config or None for pixels, factor f, regulariser, the study's autoencoder file)
MODELS = {
    "pixel": (None, 1, "pixels", ""),
    "kl_f2": (fashion_mnist_kl_f2, 2, "KL-reg", "latent/autoencoder_kl_f2"),
    "kl_f4": (fashion_mnist_kl_f4, 4, "KL-reg", "latent/autoencoder_kl_f4"),
    "vq_f4": (fashion_mnist_vq_f4, 4, "VQ-reg", "latent/autoencoder_vq_f4"),
}
LATENTS = tuple(name for name, (module, _, _, _) in MODELS.items() if module)   # kl_f2, kl_f4, vq_f4
# --scale paper: LDM's first stages at the paper's settings in place of the CPU-sized ones.
PAPER_AUTOENCODERS = {name: f"latent/autoencoder_ldm_{name}" for name in LATENTS}
PAPER_DATASETS = ("cifar10", "celeba64", "imagenet64")


def latent_overrides(module, autoencoder: str) -> dict:
    """The fields where ``module``'s latent config differs from configs/fashion_mnist.py (the U-Net's
    levels, the Gaussian decoder, no clipping), encoding with the study's autoencoder ``autoencoder``."""
    mine = traverse_util.flatten_dict(module.get_config().to_dict())
    pixel = traverse_util.flatten_dict(fashion_mnist.get_config().to_dict())
    nested = traverse_util.unflatten_dict({k: v for k, v in mine.items() if pixel.get(k) != v})
    nested["data"]["autoencoder"] = autoencoder
    return nested


def ldm4_unet(latent_size: int) -> dict:
    """LDM-4's U-Net (latent-diffusion configs/latent-diffusion/celebahq-ldm-vq-4.yaml): 224 base
    channels, multipliers 1, 2, 3, 4, two ResBlocks per level, GroupNorm(32), no dropout, plain
    up/downsampling and norms, and self-attention with 32 channels per head where the latent has
    been downsampled by 2, 4 and 8 (its ``attention_resolutions`` are those factors), here at a
    latent of side ``latent_size``; 274.06M parameters at a 64×64×3 latent (LDM: 274M)."""
    return dict(base_channels=224, channel_mult=(1, 2, 3, 4), num_res_blocks=2, norm_groups=32, dropout=0.0,
                attention_resolutions=tuple(latent_size // d for d in (2, 4, 8)), num_head_channels=32,
                resblock_updown=False, scale_shift_norm=False)


def paper_overrides(name: str, config) -> dict:
    """At ``--scale paper``: model ``name``'s overrides of its dataset's paper config ``config``. The
    pixel model is that config as it stands (Ho et al.'s CIFAR-10 U-Net, DDIM's CelebA-64 one, ADM's
    ImageNet-64 one). A latent model swaps in LDM-4's U-Net at its latent size and LDM's diffusion
    (its √β-linear schedule from 0.0015 to 0.0195, ε-prediction with L_simple, the posterior variance
    β̃, no clipping of the unit-variance latents); a class-conditional dataset's labels reach it, as in
    LDM's ImageNet model, through cross-attention to a learned 512-wide token per class. Batch, rate,
    EMA and steps stay the pixel model's: the U-Nets compare at equal steps and batch (LDM's Fig. 6
    compares f at equal steps)."""
    module, factor, _, _ = MODELS[name]
    if module is None:
        return {}
    model = ldm4_unet(config.data.image_size // factor)
    if config.model.num_classes:
        model.update(context_encoder="class_tokens", context_tokens=1, context_dim=512)
    return dict(data=dict(autoencoder=name, random_flip=False), model=model,   # latents are encoded once, unflipped
                diffusion=dict(schedule="ldm", prediction="eps", loss="simple", variance="fixed_small",
                               decoder="gaussian"),
                sample=dict(clip="none"))


def get_config():
    s = base.get_config()
    s.title = "Latent diffusion: pixel (f = 1) against KL-reg f = 2, 4 and VQ-reg f = 4 at an equal training budget"
    s.paper = ("Rombach, Blattmann, Lorenz, Esser & Ommer (2022), High-Resolution Image Synthesis with Latent "
               "Diffusion Models, §4.1 (perceptual compression trade-offs, Fig. 6–7)")
    s.dataset = "fashion_mnist"
    s.autoencoders = {name: file for name, (_, _, _, file) in MODELS.items() if file}
    s.autoencoder_steps = AUTOENCODER_STEPS
    s.paper_autoencoders, s.paper_datasets = PAPER_AUTOENCODERS, PAPER_DATASETS
    s.models = {name: dict(latent_overrides(module, name) if module else {},
                           train=dict(num_steps=round(TRAIN_SECONDS * STEPS_PER_S[name])))
                for name, (module, _, _, _) in MODELS.items()}
    s.cells = tuple(dict(model=name, sampler="ddim", steps=50, row=f"{reg}, f = {f}", col="DDIM 50", f=f, reg=reg)
                    for name, (_, f, reg, _) in MODELS.items())
    s.plot = dict(x="f", y="fid", series="reg", logx=True, logy=False)
    s.scale_note = (f"each U-Net (the study budget's 16 channels) trains for {TRAIN_SECONDS:,} s of this CPU's time, "
                    "as steps from its measured steps/s (the table below gives the steps and the images/s each run "
                    f"logged); the autoencoders are the shipped 16-channel configs at {AUTOENCODER_STEPS:,} steps, no perceptual or "
                    "adversarial loss. LDM trains 274M–395M-parameter U-Nets on 256² images with LPIPS autoencoders "
                    "and computes FID from 50,000 samples with Inception features: only the orderings are checked.")
    s.paper_scale_note = ("the paper-size models (`--scale paper`): LDM's first stages (configs/latent/autoencoder_ldm_*.py, no "
                          "LPIPS term) and LDM-4's U-Net on their latents against the dataset's pixel model, every "
                          "U-Net with the pixel model's batch, rate, EMA and steps (equal steps, as LDM's Fig. 6 "
                          "compares f); FID of 50,000 DDIM-50 samples with Inception features.")
    return s


def equal_steps(by: dict) -> bool:
    """Whether every U-Net trained as many steps as the pixel one (``--scale paper``'s equal budget),
    not as many seconds; ``by``: the rows by model."""
    return all(by[m]["train_steps"] == by["pixel"]["train_steps"] for m in LATENTS)


def claims(results, nll):
    """LDM's claims at this scale, each (text, held, figures); FID and PSNR carry ± their standard errors."""
    by = {r["model"]: r for r in results}
    fid = lambda m: metrics.fid_text(by[m])
    two_se = lambda a, b, k: metrics.two_se(by[a], by[b], k)
    moderate = min(("kl_f2", "kl_f4"), key=lambda m: by[m]["fid"])
    rate = lambda m: f"{m} {by[m]['sample_images_per_s']:.2f}"
    psnr = lambda m: f"{by[m]['ae_psnr']:.2f} ± {by[m]['ae_psnr_se']:.2f} dB"
    budget = "steps and batch" if equal_steps(by) else "wall-clock"
    return [
        (f"At equal training {budget} a moderate f (the better of KL-reg f = 2, 4) beats pixel diffusion "
         "(FID, by more than 2 s.e.)", by[moderate]["fid"] + two_se(moderate, "pixel", "fid") < by["pixel"]["fid"],
         f"{moderate} {fid(moderate)}; pixel {fid('pixel')}"),
        ("Latent diffusion samples faster than pixel diffusion at equal steps (DDIM 50, images/s with the decoder)",
         all(by[m]["sample_images_per_s"] > by["pixel"]["sample_images_per_s"] for m in LATENTS),
         ", ".join(map(rate, ("pixel",) + LATENTS))),
        ("Too large an f loses detail: the f = 4 autoencoder reconstructs worse than f = 2 (KL-reg; PSNR by more "
         "than 2 s.e., and a higher rFID)",
         by["kl_f4"]["ae_psnr"] + two_se("kl_f4", "kl_f2", "ae_psnr") < by["kl_f2"]["ae_psnr"]
         and by["kl_f4"]["ae_rfid"] > by["kl_f2"]["ae_rfid"],
         f"PSNR f = 4 {psnr('kl_f4')}, f = 2 {psnr('kl_f2')}; rFID {by['kl_f4']['ae_rfid']:.1f} vs "
         f"{by['kl_f2']['ae_rfid']:.1f}"),
    ]


def findings(results) -> list[str]:
    """Where each model's FID comes from, each sentence chosen by the figures it quotes (2 s.e.): the
    FID of the autoencoder's reconstructions of as many held-out images (``ae_fid``, in the cells'
    own terms; fewer where the split is smaller, said so) as the floor under a latent model's sample
    FID, the steps each U-Net trained (bought by the equal wall-clock, or equal at ``--scale
    paper``), what f = 4 gives up against f = 2, and VQ against KL at f = 4."""
    by = {r["model"]: r for r in results}
    fid = lambda m: metrics.fid_text(by[m])
    pm = lambda m, k: f"{by[m][k]:.2f} ± {by[m][k + '_se']:.2f}"
    compare = lambda a, b, k="fid", k_b="": (by[a][k] - by[b][k_b or k], metrics.two_se(by[a], by[b], k, k_b))
    beats = lambda a, b: compare(a, b)[0] < -compare(a, b)[1]

    gaps = {m: compare(m, m, "fid", "ae_fid") for m in LATENTS}
    at_floor = [m for m in LATENTS if abs(gaps[m][0]) <= gaps[m][1]]
    below = [m for m in LATENTS if gaps[m][0] < -gaps[m][1]]
    possessive = lambda ms: " and ".join(f"{m}'s" for m in ms) + (" FID is" if len(ms) == 1 else " FIDs are")
    n, num = by[LATENTS[0]].get("floor_images"), by[LATENTS[0]].get("num")
    fewer = n is not None and num is not None and n < num     # a held-out split smaller than the cells
    floor = ("A latent model's samples are decoded by its autoencoder, so the FID of the autoencoder's "
             + (f"reconstructions of the {n:,} held-out images there are (fewer than the {num:,} samples: FID is "
                "biased upwards at fewer images, so this floor is overstated) " if fewer else
                "reconstructions of as many held-out images ")
             + f"is a floor under the samples' FID (the held-out images themselves: {pm(LATENTS[0], 'heldout_fid')}): "
             + "; ".join(f"{m} {fid(m)} on {pm(m, 'ae_fid')}" for m in LATENTS) + ". ")
    if not at_floor and not below:
        floor += ("Every latent model is above its floor by more than 2 s.e.: the diffusion model, not the first "
                  "stage, sets its FID.")
    else:
        if at_floor:
            floor += f"{possessive(at_floor)} within 2 s.e. of the floor: there the first stage may be the limit. "
        if below:
            floor += f"{possessive(below)} below the floor by more than 2 s.e.: for it the floor is no bound."
    best = min(LATENTS, key=lambda m: by[m]["fid"])
    ratio = lambda m: by[m]["train_steps"] / by["pixel"]["train_steps"]
    equal = equal_steps(by)
    if equal:
        steps = f"Every U-Net trained the same {by['pixel']['train_steps']:,} steps at the same batch. "
    else:
        steps = (f"The same {TRAIN_SECONDS:,} s of training bought the pixel U-Net {by['pixel']['train_steps']:,} "
                 "steps and the latent ones "
                 + ", ".join(f"{by[m]['train_steps']:,} ({m}, {ratio(m):.1f}×)" for m in LATENTS) + ", at the same batch. ")
    if beats(best, "pixel"):
        steps += (f"The best latent model ({best}, {fid(best)}) beats pixel diffusion ({fid('pixel')}) by more than "
                  "2 s.e." + (" at equal steps." if equal else ": on this CPU the cheaper steps outweigh the first stage's floor."))
    elif beats("pixel", best):
        under_floor = compare("pixel", best, "fid", "ae_fid")
        steps += (f"Pixel diffusion ({fid('pixel')}) beats the best latent model ({best}, {fid(best)}) by more than "
                  "2 s.e." + (f", and even that model's floor ({pm(best, 'ae_fid')})."
                              if under_floor[0] < -under_floor[1] else
                              ": at equal steps the latent model does not catch up." if equal else
                              ": the extra steps did not close the gap at this budget."))
    else:
        steps += f"Pixel diffusion ({fid('pixel')}) and the best latent model ({best}, {fid(best)}) are within 2 s.e."
    psnr_drop, psnr_margin = compare("kl_f2", "kl_f4", "ae_psnr")
    lost = psnr_drop > psnr_margin
    samples = ("better" if beats("kl_f4", "kl_f2") else "worse" if beats("kl_f2", "kl_f4")
               else "no different within 2 s.e.")
    detail = (f"KL-reg f = 4 reconstructs at {pm('kl_f4', 'ae_psnr')} dB against f = 2's {pm('kl_f2', 'ae_psnr')} "
              f"(reconstruction FID {pm('kl_f4', 'ae_fid')} against {pm('kl_f2', 'ae_fid')}): "
              + ("detail is lost, by more than 2 s.e. of PSNR" if lost else "no loss of detail beyond 2 s.e. of PSNR")
              + f". Its samples are {samples} (FID {fid('kl_f4')} against {fid('kl_f2')}) "
              + ("at the same steps" if equal else f"for {by['kl_f4']['train_steps'] / by['kl_f2']['train_steps']:.1f}× the steps")
              + ("." if not lost else ": the lost detail costs less than the "
                 + ("smaller latent gains." if equal else "extra steps buy at this budget.")
                 if samples == "better" else ": the lost detail shows in the samples." if samples == "worse"
                 else ": the lost detail and the " + ("smaller latent" if equal else "extra steps") + " balance."))
    vq = (f"At f = 4 the VQ-reg autoencoder reconstructs at {pm('vq_f4', 'ae_psnr')} dB, FID {pm('vq_f4', 'ae_fid')}, "
          f"the KL-reg one at {pm('kl_f4', 'ae_psnr')} dB, FID {pm('kl_f4', 'ae_fid')}; their diffusion models' "
          f"samples: VQ {fid('vq_f4')}, KL {fid('kl_f4')} ("
          + ("VQ better by more than 2 s.e." if beats("vq_f4", "kl_f4") else "KL better by more than 2 s.e."
             if beats("kl_f4", "vq_f4") else "within 2 s.e.") + ").")
    return [floor.rstrip(), steps, detail, vq]
