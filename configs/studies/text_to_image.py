"""Text-to-image on captioned MNIST (seeds 000 and 002): GLIDE's text encoder trained jointly with the
U-Net (configs/text/text_mnist.py), Imagen's frozen text tower (here the CLIP's, configs/text/text_mnist_clip.py)
and unCLIP's prior → decoder (configs/unclip/prior_mnist.py, unclip_decoder_mnist.py), each under
classifier-free guidance at w ∈ {0, 1, 3, 5}; GLIDE's CLIP guidance (the noised CLIP,
configs/text/clip_mnist_noisy.py) of the jointly trained model at a few scales; and a larger U-Net beside
the frozen encoder, for Imagen's encoder-against-U-Net claim. Per cell: FID ± s.e., class match,
attribute accuracy and the CLIP score by the clean CLIP (configs/text/clip_mnist.py). The two CLIPs train
first (experiments.train_clip, in <workdir>/clips/<name>), and every model's CLIP fields name them.

python -m experiments.reproduce --study text_to_image --workdir runs/studies/text_to_image
(MNIST at the default scale only: --scale paper and other datasets are refused.)
"""
from flax import traverse_util

from configs import base as base_config, mnist
from configs.studies import base
from configs.text import text_mnist, text_mnist_clip
from configs.unclip import decoder_mnist, prior_mnist
from diffusion import metrics

GUIDANCE_SCALES = (0, 1, 3, 5)     # classifier-free guidance w (GLIDE §2.3, eq. 6; 0: the conditional model)
CLIP_SCALES = (1, 3, 10)           # CLIP guidance s on the logit (1/τ)·cos (GLIDE §2.4), as classifier guidance's w
MATCHED_W = 3                      # the w at which the encoder and U-Net pair is compared
PRIOR_SCALE = 0.0                  # unCLIP's prior draws unguided, P(z_i | y) as trained: w acts on the decoder alone
LARGE_CHANNELS = 24                # the larger U-Net: 1.5× the budget's 16 base channels
SAMPLER = dict(sampler="euler_ancestral", steps=25)   # recipe.md: 36–59 FID better than DDIM on short-trained models
# Sized to train and measure in one ~2-hour sitting on 2 CPU cores (at 2.8 main-job steps/s): a shorter run
# than the other studies', with what docs/main_job/recipe.md's 2,000-step proxies measured better for short runs:
# a constant rate after the warm-up (cosine decay to the end cost ~60 FID), lr 2e-3 over 1e-3, and for the U-Nets
# min-SNR-5 weighting (measured with cosine decay); the prior keeps its own objective and rate.
TRAIN_STEPS, LR, DECAY, NUM_SAMPLES = 1500, 2e-3, "constant", 300
UNET_RECIPE = {"diffusion": {"weighting": "min_snr"}}
# the U-Net models' rows, and the unCLIP decoder's (after its prior)
FAMILIES = {"joint": "joint text encoder (GLIDE)", "clip_text": "frozen CLIP text tower (Imagen-style)",
            "unclip_decoder": "unCLIP (prior → decoder)"}
CLIP_GUIDED, LARGE = "joint, CLIP guidance", "joint, larger U-Net"


def own_fields(config, parent) -> dict:
    """The nested fields where ``config`` differs from the ``parent`` config it derives from (its text or
    unCLIP settings alone, not the recipe it inherits), its CLIP run named by the study's CLIP ``clip``."""
    mine = traverse_util.flatten_dict(config.to_dict())
    theirs = traverse_util.flatten_dict(parent.to_dict())
    nested = traverse_util.unflatten_dict({k: v for k, v in mine.items() if theirs.get(k) != v})
    if "clip_run" in nested.get("model", {}):
        nested["model"]["clip_run"] = "clip"
    return nested


def with_fields(fields: dict, extra: dict) -> dict:
    """``fields`` with the nested ``extra`` merged in."""
    flat = traverse_util.flatten_dict(fields)
    flat.update(traverse_util.flatten_dict(extra))
    return traverse_util.unflatten_dict(flat)


def get_config():
    s = base.get_config()
    s.title = "Text-to-image: joint encoder, frozen CLIP text tower and unCLIP under guidance"
    s.paper = ("Nichol et al. (2022), GLIDE, §4 (classifier-free against CLIP guidance); Saharia et al. (2022), "
               "Imagen, §4.4 (text encoder size against U-Net size, guidance weight sweeps); Ramesh et al. (2022), "
               "unCLIP, §5")
    s.dataset = "mnist"
    s.clips = {"clip": "text/clip_mnist", "clip_noisy": "text/clip_mnist_noisy"}
    s.guidance_clip, s.score_clip = "clip_noisy", "clip"
    s.budget.train.num_steps, s.budget.optim.lr, s.budget.optim.decay = TRAIN_STEPS, LR, DECAY
    s.num_samples = NUM_SAMPLES
    steps = s.budget.train.num_steps
    recipe = mnist.recipe_on_the_linear_schedule()   # the text and unCLIP configs' parent
    joint = with_fields(own_fields(text_mnist.get_config(), recipe), UNET_RECIPE)
    prior = own_fields(prior_mnist.get_config(), base_config.get_config())
    s.models = {
        "joint": joint,
        "joint_large": with_fields(joint, {"model": {"base_channels": LARGE_CHANNELS}}),
        "clip_text": with_fields(own_fields(text_mnist_clip.get_config(), recipe), UNET_RECIPE),
        "unclip_prior": with_fields(prior, {"train": {"num_steps": steps}}),
        "unclip_decoder": with_fields(own_fields(decoder_mnist.get_config(), recipe), UNET_RECIPE),
    }
    guided = lambda w: dict(guidance="classifier_free" if w else "", scale=float(w))
    cells = [dict(model=m, **SAMPLER, **guided(w), row=row, col=f"w = {w}", w=w)
             for m, row in FAMILIES.items() for w in GUIDANCE_SCALES]
    cells = [dict(c, prior="unclip_prior", prior_scale=PRIOR_SCALE) if c["model"] == "unclip_decoder" else c
             for c in cells]
    cells.append(dict(model="joint_large", **SAMPLER, **guided(MATCHED_W), row=LARGE, col=f"w = {MATCHED_W}",
                      w=MATCHED_W))
    cells += [dict(model="joint", **SAMPLER, guidance="clip", scale=float(s_), row=CLIP_GUIDED, col=f"CLIP s = {s_}",
                   w=0) for s_ in CLIP_SCALES]
    s.cells = tuple(cells)
    s.metrics = ("fid", "class_match", "attribute_accuracy", "clip_score")
    s.plot = dict(x="class_match", y="fid", series="row", logx=False, logy=False)   # GLIDE's trade-off curves
    base_channels = s.budget.model.base_channels
    s.scale_note = (f"every model trains {steps:,} steps at batch 64 (the unCLIP prior at its own batch 256), half "
                    "the other studies' budget so that the study runs in one ~2-hour sitting, the U-Nets at a "
                    f"constant lr {LR:g} after the warm-up with min-SNR-5 weighting (docs/main_job/recipe.md's "
                    f"short-run findings), sampled by {SAMPLER['steps']} Euler ancestral steps; U-Nets of "
                    f"{base_channels} base channels (the larger one {LARGE_CHANNELS}) with 2-layer, 64-wide text "
                    "encoders, on the 10k MNIST subset and templated captions; the CLIPs are configs/text/clip_mnist*.py "
                    "(4,000 steps, batch 128, 64-d). GLIDE trains a 3.5B-parameter model and Imagen 2B–7.6B on "
                    "hundreds of millions of pairs for 2.5M steps, unCLIP a 3.5B decoder, and they measure 30,000 "
                    f"samples of MS-COCO captions with Inception FID; here {s.num_samples} samples per cell for "
                    "held-out captions, FID on the project's MNIST classifier: only the orderings are checked. The "
                    "'stronger text encoder' is the CLIP's text tower, pretrained contrastively on every caption "
                    "(its zero-shot accuracy and recall are in clips/clip/clip_eval.json) against the equally sized "
                    "encoder the joint model trains from scratch inside its own budget; the larger U-Net has "
                    f"{LARGE_CHANNELS / base_channels:g}× the channels. unCLIP's prior draws unguided (DDIM 64, its config's), w guides the decoder.")
    return s


def _cells(results):
    """``cell(row, col)``: the result row of a model (a ``FAMILIES`` key or its row label) and a column."""
    by = {(r["row"], r["col"]): r for r in results}
    return lambda row, col: by[(FAMILIES.get(row, row), col)]


def _class_match_se(r) -> float:
    return (r["class_match"] * (1 - r["class_match"]) / r["num"]) ** 0.5


def cfg_fid_at(results, class_match: float):
    """The joint model's classifier-free FID interpolated (piecewise linearly in class match along
    w = 0 … 5) at ``class_match``; None outside the range its w sweep covers."""
    cell = _cells(results)
    curve = sorted((cell("joint", f"w = {w}")["class_match"], cell("joint", f"w = {w}")["fid"])
                   for w in GUIDANCE_SCALES)
    for (a, fa), (b, fb) in zip(curve, curve[1:]):
        if a <= class_match <= b:
            return fa if b == a else fa + (fb - fa) * (class_match - a) / (b - a)
    return None


def claims(results, nll):
    """GLIDE's, Imagen's and unCLIP's claims at this scale, each (text, held, figures)."""
    cell = _cells(results)
    low, high = f"w = {GUIDANCE_SCALES[0]}", f"w = {GUIDANCE_SCALES[-1]}"
    trade = {m: (cell(m, high)["class_match"] > cell(m, low)["class_match"],
                 cell(m, high)["fid"] > cell(m, low)["fid"] + metrics.two_se(cell(m, high), cell(m, low), "fid"))
             for m in FAMILIES}
    trade_text = "; ".join(f"{m}: class match {100 * cell(m, low)['class_match']:.1f}% → "
                           f"{100 * cell(m, high)['class_match']:.1f}%, FID {metrics.fid_text(cell(m, low))} → "
                           f"{metrics.fid_text(cell(m, high))}" for m in FAMILIES)
    clip_rows = [r for r in results if r["row"] == CLIP_GUIDED]
    matched = [(r, cfg_fid_at(results, r["class_match"])) for r in clip_rows]
    matched = [(r, f) for r, f in matched if f is not None]
    clip_text = "; ".join(f"{r['col']}: class match {100 * r['class_match']:.1f}%, FID {metrics.fid_text(r)} against "
                          f"classifier-free {f:.2f}" for r, f in matched) or (
        "no CLIP-guided cell's class match falls within the classifier-free sweep's ("
        + ", ".join(f"{r['col']} {100 * r['class_match']:.1f}%" for r in clip_rows) + ")")
    at = f"w = {MATCHED_W}"
    base_, encoder, unet = cell("joint", at), cell("clip_text", at), cell(LARGE, at)
    gain = lambda r: r["class_match"] - base_["class_match"]
    two_se_gain = lambda r: 2 * (_class_match_se(r) ** 2 + _class_match_se(base_) ** 2) ** 0.5
    return [
        ("Guidance trades diversity for alignment: from w = 0 to w = 5 class match rises and FID rises by more "
         "than 2 s.e., for each of the three models", all(a and b for a, b in trade.values()), trade_text),
        ("Classifier-free guidance is preferred to CLIP guidance: at matched class match (the joint model's "
         "classifier-free FID interpolated at each CLIP-guided cell's), classifier-free guidance has the lower FID",
         bool(matched) and all(f < r["fid"] for r, f in matched), clip_text),
        (f"A stronger text encoder improves alignment more than a larger U-Net: at w = {MATCHED_W}, the frozen CLIP "
         f"text tower raises class match over the joint model by more than widening the U-Net to {LARGE_CHANNELS} channels does "
         "(and by more than 2 s.e.)", gain(encoder) > gain(unet) and gain(encoder) > two_se_gain(encoder),
         f"class match joint {100 * base_['class_match']:.1f}%, frozen CLIP text tower "
         f"{100 * encoder['class_match']:.1f}% ({100 * gain(encoder):+.1f} points), larger U-Net "
         f"{100 * unet['class_match']:.1f}% ({100 * gain(unet):+.1f}); CLIP score {encoder['clip_score']:.1f} vs "
         f"{unet['clip_score']:.1f} (joint {base_['clip_score']:.1f})"),
    ]


def findings(results) -> list[str]:
    """What the figures say beyond the claims, each sentence chosen by the figures it quotes (2 s.e.):
    where FID is lowest along w, CLIP guidance against the same CLIP's text tower under classifier-free
    guidance, and the unsaturated alignment measures at the encoder-against-U-Net comparison."""
    cell = _cells(results)
    apart = lambda a, b, k: abs(a[k] - b[k]) > metrics.two_se(a, b, k)
    brief = lambda r: f"class {100 * r['class_match']:.1f}%, FID {metrics.fid_text(r)}"
    lines = []
    for m in FAMILIES:
        sweep = [cell(m, f"w = {w}") for w in GUIDANCE_SCALES]
        best = min(sweep, key=lambda r: r["fid"])
        low, high = sweep[0], sweep[-1]
        start = f" ({brief(best)})" if best is low else f" ({brief(best)}; {low['col']}: {brief(low)})"
        lines.append(
            f"{FAMILIES[m]}: FID is lowest at {best['col']}{start}; from there to {high['col']} ({brief(high)}) it "
            f"rises by {high['fid'] - best['fid']:.1f}, " + ("more" if apart(high, best, "fid") else "less")
            + " than 2 s.e." + (" Below the minimum guidance first repairs samples the conditional model draws off "
                                "the data (class match rises as FID falls); the trade-off appears past it."
                                if best is not low else ""))
    clip_best = min((r for r in results if r["row"] == CLIP_GUIDED), key=lambda r: r["fid"])
    tower = min((cell("clip_text", f"w = {w}") for w in GUIDANCE_SCALES), key=lambda r: r["fid"])
    lines.append(
        f"CLIP guidance lends the joint model the CLIP's text knowledge (unguided, the joint model's own encoder, "
        f"trained inside its {TRAIN_STEPS:,} steps, gives class match {100 * cell('joint', 'w = 0')['class_match']:.1f}% "
        f"against the frozen CLIP tower's {100 * cell('clip_text', 'w = 0')['class_match']:.1f}%). CLIP guidance's "
        f"best cell ({clip_best['col']}: {brief(clip_best)}) against the model "
        f"that reads the same CLIP's frozen text tower under classifier-free guidance at its best "
        f"({tower['col']}: {brief(tower)}): FID "
        + ("lower by more than 2 s.e. with classifier-free guidance." if tower["fid"] < clip_best["fid"]
           and apart(tower, clip_best, "fid") else
           "apart by less than 2 s.e." if not apart(tower, clip_best, "fid") else
           "lower by more than 2 s.e. with CLIP guidance."))
    at = f"w = {MATCHED_W}"
    encoder, unet = cell("clip_text", at), cell(LARGE, at)
    lines.append(
        f"At {at} class match is near its ceiling for the frozen tower and the larger U-Net "
        f"({100 * encoder['class_match']:.1f}% and {100 * unet['class_match']:.1f}%, s.e. "
        f"{100 * _class_match_se(encoder):.1f} and {100 * _class_match_se(unet):.1f}); the unsaturated measures "
        f"separate them: attribute accuracy {100 * encoder['attribute_accuracy']['all']:.1f}% against "
        f"{100 * unet['attribute_accuracy']['all']:.1f}%, CLIP score {encoder['clip_score']:.1f} ± "
        f"{encoder['clip_score_se']:.1f} against {unet['clip_score']:.1f} ± {unet['clip_score_se']:.1f} ("
        + ("more than" if apart(encoder, unet, "clip_score") else "within") + " 2 s.e.).")
    return lines
