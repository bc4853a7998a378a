"""Cascaded diffusion with conditioning augmentation (Ho et al. 2021, CDM) on Fashion-MNIST: a base
model at 14×14 and super-resolution models 14 → 28 trained with no augmentation, Gaussian
augmentation (s embedded like t) and blur; FID of the cascade over the level s at sampling,
truncated against non-truncated, blur against Gaussian, and against one 28×28 model of equal
training budget: as many steps at twice the batch, so it sees as many images as the base and one
super-resolution stage together (at either scale).

python -m experiments.reproduce --study cascaded --workdir runs/studies/cascaded
(Fashion-MNIST only: its models' 14×14 base and 14 → 28 stages are sized for 28×28 data; the GPU
cascades are configs/cifar10_sr16to32.py and configs/imagenet_sr32to64.py.)
"""
from configs.studies import base
from diffusion import metrics

LEVELS = (0, 25, 50, 100, 200, 400)
SR = dict(data=dict(low_resolution=14))
GAUSSIAN, TRUNCATED = "Gaussian augmentation, non-truncated", "Gaussian augmentation, truncated"
NONE, BLUR, SINGLE = "no augmentation", "blur augmentation (σ ∈ [0.4, 0.6], half the examples)", "one 28×28 model, equal budget"


def get_config():
    s = base.get_config()
    s.title = "Cascaded diffusion: FID of a 14×14 → 28×28 cascade against the conditioning augmentation"
    s.paper = ("Ho, Saharia, Chan, Fleet, Norouzi & Salimans (2021), Cascaded Diffusion Models for High Fidelity "
               "Image Generation, §3 and §4.3 (conditioning augmentation ablations)")
    s.dataset = "fashion_mnist"
    steps, batch = s.budget.train.num_steps, s.budget.train.batch_size
    s.models = dict(       # the study's data and features are its largest models' (plan.largest): 28×28
        single=dict(train=dict(batch_size=2 * batch)),
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
    s.cells = tuple(cells)
    s.plot = dict(x="aug_level", y="fid", series="row", logx=False, logy=False)
    s.scale_note = (f"the base (14×14, two levels) and each super-resolution stage train {steps:,} steps at batch "
                    f"{batch} with the study budget's 16-channel U-Net; the single 28×28 model {steps:,} steps at batch "
                    f"{2 * batch}, the images one cascade (base and stage) sees (a 14×14 image costs about a quarter "
                    "of a 28×28 one, so the cascade spent less compute). CDM trains ImageNet cascades of 300M+-parameter U-Nets and computes "
                    "FID from 50,000 samples with Inception features: only orderings are checked here.")
    return s


def claims(results, nll):
    """The paper's claims, each (text, held, figures); figures carry FID ± its standard error."""
    cell = {(r["row"], r["aug_level"]): r for r in results}
    fid = lambda key: cell[key]["fid"]
    two_se = lambda a, b: 2 * (cell[a].get("fid_se", 0.0) ** 2 + cell[b].get("fid_se", 0.0) ** 2) ** 0.5
    beats = lambda a, b: fid(a) + two_se(a, b) < fid(b)
    no_worse = lambda a, b: fid(a) <= fid(b) + two_se(a, b)
    show = lambda key: f"{key[0]}, s = {key[1]}: {metrics.fid_text(cell[key])}"
    best = lambda row, levels=LEVELS: (row, min(levels, key=lambda s: fid((row, s))))
    gaussian, truncated = best(GAUSSIAN), best(TRUNCATED)
    positive = best(GAUSSIAN, LEVELS[1:])
    cascade_best = min((gaussian, truncated, (NONE, 0), (BLUR, 0)), key=fid)
    return [
        ("Conditioning augmentation is essential: the best Gaussian-augmented cascade beats the unaugmented one "
         "by more than 2 s.e.", beats(gaussian, (NONE, 0)), f"{show(gaussian)}; {show((NONE, 0))}"),
        ("A non-zero level s at sampling beats s = 0 (non-truncated, by more than 2 s.e.)",
         beats(positive, (GAUSSIAN, 0)), f"{show(positive)}; {show((GAUSSIAN, 0))}"),
        ("Non-truncated augmentation with a tuned s is at least as good as truncated at its best s (within 2 s.e.)",
         no_worse(gaussian, truncated), f"{show(gaussian)}; {show(truncated)}"),
        ("Blur at the last stage (CDM's choice at its highest resolution) is at least as good as Gaussian "
         "augmentation at its best s (within 2 s.e.)", no_worse((BLUR, 0), gaussian),
         f"{show((BLUR, 0))}; {show(gaussian)}"),
        ("The best cascade beats one 28×28 model of equal training budget (by more than 2 s.e.)",
         beats(cascade_best, (SINGLE, 0)), f"{show(cascade_best)}; {show((SINGLE, 0))}"),
    ]
