"""Cascaded diffusion with conditioning augmentation (Ho et al. 2021, CDM) on Fashion-MNIST: a base
model at 14×14 and super-resolution models 14 → 28 trained with no augmentation, Gaussian
augmentation (s embedded like t) and blur; FID of the cascade over the level s at sampling,
truncated against non-truncated, blur against Gaussian, and against one 28×28 model of equal
training compute: the FLOPs of the base and one super-resolution stage together, as more steps at
the same batch (``CASCADE_FLOPS``). Diagnostic cells separate the stages' errors: the super-resolution
stages on real inputs (the held-out images shrunk to 14×14, ``experiments.cascade.chain.HELDOUT``), and
bicubic upsampling alone of the base's samples and of those real inputs.

python -m experiments.reproduce --study cascaded --workdir runs/studies/cascaded
(Fashion-MNIST only: its models' 14×14 base and 14 → 28 stages are sized for 28×28 data; the GPU
cascades are configs/cascade/cifar10_sr16to32.py and configs/cascade/imagenet_sr32to64.py.)
"""
from configs.studies import base
from diffusion import metrics
from experiments.cascade.chain import HELDOUT

LEVELS = (0, 25, 50, 100, 200, 400)
SR = dict(data=dict(low_resolution=14))
# Training FLOPs per example of the base and a super-resolution stage together, over the single
# 28×28 model's (XLA's count, diffusion.models.cost.model_cost: 23.56 + 136.20 over 135.98 MFLOP
# forward at the study budget's U-Net; tests/test_cascade.py recounts it).
CASCADE_FLOPS = 1.175
GAUSSIAN, TRUNCATED = "Gaussian augmentation, non-truncated", "Gaussian augmentation, truncated"
NONE, BLUR, SINGLE = "no augmentation", "blur augmentation (σ ∈ [0.4, 0.6], half the examples)", "one 28×28 model, equal compute"
REAL = "Gaussian augmentation, on held-out 14×14 images"
REAL_NONE, REAL_BLUR = "no augmentation, on held-out 14×14 images", "blur augmentation, on held-out 14×14 images"
BARE_BASE, BARE_REAL = ("base samples, bicubic upsampling alone (no super-resolution)",
                        "held-out 14×14 images, bicubic upsampling alone (no super-resolution)")


def get_config():
    s = base.get_config()
    s.title = "Cascaded diffusion: FID of a 14×14 → 28×28 cascade against the conditioning augmentation"
    s.paper = ("Ho, Saharia, Chan, Fleet, Norouzi & Salimans (2021), Cascaded Diffusion Models for High Fidelity "
               "Image Generation, §3 (conditioning augmentation: Gaussian noise, §3.1 blur, truncated and "
               "non-truncated) and §4.3–4.4 (its ablations)")
    s.dataset = "fashion_mnist"
    steps, batch = s.budget.train.num_steps, s.budget.train.batch_size
    s.models = dict(       # the study's data and features are its largest models' (plan.largest): 28×28
        single=dict(train=dict(num_steps=round(CASCADE_FLOPS * steps))),
        base=dict(data=dict(image_size=14), model=dict(channel_mult=(1, 2))),
        sr_none=SR,
        sr_gaussian=dict(SR, cascade=dict(augmentation="gaussian", aug_level_range=(0, 500))),
        sr_blur=dict(SR, cascade=dict(augmentation="blur", blur_sigma_range=(0.4, 0.6))))
    cascade = dict(sampler="ddim", steps=50, cascade=("base",))
    cells = [dict(cascade, model="sr_gaussian", aug_level=level, truncated=truncated, row=row, col=f"s = {level}",
                  picture=(level, truncated) == (100, False))
             for row, truncated in ((GAUSSIAN, False), (TRUNCATED, True)) for level in LEVELS]
    cells += [dict(cascade, model="sr_none", row=NONE, col="s = 0", picture=True),
              dict(cascade, model="sr_blur", row=BLUR, col="s = 0"),
              dict(model="single", sampler="ddim", steps=50, row=SINGLE, col="s = 0")]
    real = dict(cascade, cascade=(HELDOUT,))      # each stage alone, on real 14×14 inputs
    cells += [dict(real, model="sr_gaussian", aug_level=level, row=REAL, col=f"s = {level}") for level in LEVELS]
    cells += [dict(real, model="sr_none", row=REAL_NONE, col="s = 0", picture=True),
              dict(real, model="sr_blur", row=REAL_BLUR, col="s = 0"),
              dict(cascade, model="sr_none", row=BARE_BASE, col="s = 0", upsampled_input=True),
              dict(real, model="sr_none", row=BARE_REAL, col="s = 0", upsampled_input=True)]
    s.cells = tuple(cells)
    s.plot = dict(x="aug_level", y="fid", series="row", logx=False, logy=False)
    s.scale_note = (f"the base (14×14, two levels) and each super-resolution stage train {steps:,} steps at batch "
                    f"{batch} with the study budget's 16-channel U-Net; the single 28×28 model "
                    f"{round(CASCADE_FLOPS * steps):,} steps at batch {batch}, the training FLOPs of the base and one "
                    f"stage together (×{CASCADE_FLOPS} a stage's: XLA's count, a 14×14 base example costs 0.17 of a "
                    "28×28 one). CDM trains ImageNet cascades of 300M+-parameter U-Nets and computes FID from 50,000 "
                    "samples with Inception features: only orderings are checked here.")
    return s


class Figures:
    """The cells' FIDs by (row, level s), with the comparisons the claims and findings make."""

    def __init__(self, results):
        self.cell = {(r["row"], r["aug_level"]): r for r in results}

    def fid(self, key) -> float:
        return self.cell[key]["fid"]

    def two_se(self, a, b) -> float:
        return 2 * (self.cell[a].get("fid_se", 0.0) ** 2 + self.cell[b].get("fid_se", 0.0) ** 2) ** 0.5

    def beats(self, a, b) -> bool:
        """a's FID is lower than b's by more than 2 s.e. of the difference."""
        return self.fid(a) + self.two_se(a, b) < self.fid(b)

    def no_worse(self, a, b) -> bool:
        return self.fid(a) <= self.fid(b) + self.two_se(a, b)

    def text(self, key) -> str:
        return metrics.fid_text(self.cell[key])

    def show(self, key) -> str:
        return f"{key[0]}, s = {key[1]}: {self.text(key)}"

    def best(self, row, levels=LEVELS):
        return row, min(levels, key=lambda s: self.fid((row, s)))


def claims(results, nll):
    """The paper's claims, each (text, held, figures); figures carry FID ± its standard error."""
    f = Figures(results)
    gaussian, truncated = f.best(GAUSSIAN), f.best(TRUNCATED)
    positive = f.best(GAUSSIAN, LEVELS[1:])
    cascade_best = min((gaussian, truncated, (NONE, 0), (BLUR, 0)), key=f.fid)
    return [
        ("Conditioning augmentation is essential: the best Gaussian-augmented cascade beats the unaugmented one "
         "by more than 2 s.e.", f.beats(gaussian, (NONE, 0)), f"{f.show(gaussian)}; {f.show((NONE, 0))}"),
        ("A non-zero level s at sampling beats s = 0 (non-truncated, by more than 2 s.e.)",
         f.beats(positive, (GAUSSIAN, 0)), f"{f.show(positive)}; {f.show((GAUSSIAN, 0))}"),
        ("Non-truncated augmentation with a tuned s is at least as good as truncated at its best s (within 2 s.e.)",
         f.no_worse(gaussian, truncated), f"{f.show(gaussian)}; {f.show(truncated)}"),
        ("Blur at the last stage (CDM's choice at its highest resolution) is at least as good as Gaussian "
         "augmentation at its best s (within 2 s.e.)", f.no_worse((BLUR, 0), gaussian),
         f"{f.show((BLUR, 0))}; {f.show(gaussian)}"),
        ("The best cascade beats one 28×28 model of equal training compute (by more than 2 s.e.)",
         f.beats(cascade_best, (SINGLE, 0)), f"{f.show(cascade_best)}; {f.show((SINGLE, 0))}"),
    ]


def findings(results) -> list[str]:
    """Where the cascade's error comes from, from the diagnostic cells: each stage on real 14×14
    inputs and bicubic upsampling alone; each sentence follows the figures it quotes (2 s.e.)."""
    f = Figures(results)
    real, generated, single = f.best(REAL), f.best(GAUSSIAN), (SINGLE, 0)
    bare_base, bare_real = (BARE_BASE, 0), (BARE_REAL, 0)
    best_real = min((real, (REAL_NONE, 0), (REAL_BLUR, 0)), key=f.fid)
    lines = [
        f"The Gaussian-augmented stage gives FID {f.text(real)} on real 14×14 inputs (its best s, {real[1]}) and "
        f"{f.text(generated)} after the base model (its best s, {generated[1]}): "
        + ("the base's samples, not the super-resolution stage, limit the cascade." if f.beats(real, generated)
           else "no worse after the base than on real inputs beyond 2 s.e."),
        f"Bicubic upsampling alone gives FID {f.text(bare_base)} from the base's samples and {f.text(bare_real)} from real "
        f"14×14 images: the base's samples are {f.fid(bare_base) - f.fid(bare_real):+.1f} FID from real ones before "
        f"any super-resolution, and the Gaussian-augmented stage takes {f.fid(bare_base) - f.fid(generated):.1f} "
        f"of that off. On real inputs the stages trained on clean or blurred inputs "
        + ("improve on" if all(f.beats(k, bare_real) for k in ((REAL_NONE, 0), (REAL_BLUR, 0))) else "do not both beat")
        + f" bare upsampling (no augmentation {f.text((REAL_NONE, 0))}, blur {f.text((REAL_BLUR, 0))}); the "
        "Gaussian-augmented one "
        + ("does too" if f.beats(real, bare_real) else "does not")
        + f" ({f.text(real)}): it was trained on inputs noised to every s in [0, 500].",
        f"On real inputs the best stage ({best_real[0]}: {f.text(best_real)}) "
        + ("beats" if f.beats(best_real, single) else "does not beat (by 2 s.e.)")
        + f" the single 28×28 model of equal compute ({f.text(single)}): "
        + ("with a base as good as the data the cascade would win; at this budget its 14×14 base is what loses."
           if f.beats(best_real, single) else "the super-resolution stage itself is no better than one model here."),
    ]
    gain_generated = f.fid((NONE, 0)) - f.fid(generated)
    gain_real = f.fid((REAL_NONE, 0)) - f.fid(real)
    lines.append(
        f"Gaussian augmentation's gain (no augmentation's FID minus that at the best s) is {gain_generated:+.1f} "
        f"after the base and {gain_real:+.1f} on real inputs; blur's is "
        f"{f.fid((NONE, 0)) - f.fid((BLUR, 0)):+.1f} and {f.fid((REAL_NONE, 0)) - f.fid((REAL_BLUR, 0)):+.1f}. "
        + ("Augmentation pays where the inputs are generated, the train–test mismatch it is for (CDM §3)."
           if gain_generated > gain_real else "At this scale it pays no more on generated inputs than on real ones."))
    return lines
