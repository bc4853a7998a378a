"""Guidance (Ho & Salimans 2021; Dhariwal & Nichol 2021; Saharia et al. 2022): classifier-free
guidance weight w against FID and Inception Score on a class-conditional model, the same with an
ADM noisy classifier on an unconditional one, and static vs dynamic thresholding at large w.

python -m experiments.reproduce --study guidance --workdir runs/studies/guidance
"""
from configs.studies import base
from diffusion import metrics

SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)


def get_config():
    s = base.get_config()
    s.title = "Guidance: the FID / Inception Score trade-off"
    s.paper = ("Ho & Salimans (2021) Figure 4; Dhariwal & Nichol (2021) Figure 4 and Table 4; "
               "Saharia et al. (2022) §2.3 (dynamic thresholding)")
    s.models = dict(conditional=dict(model=dict(num_classes=10), data=dict(class_dropout=0.1)), unconditional={})
    s.noisy_classifier = "unconditional"   # the model whose schedule the ADM noisy classifier is trained on
    cells = [dict(model="conditional", sampler="ddim", steps=50, guidance="classifier_free", scale=w,
                  row="classifier-free", col=f"w = {w:g}") for w in SCALES]
    cells += [dict(model="unconditional", sampler="ddim", steps=50, guidance="classifier", scale=w,
                   row="classifier", col=f"w = {w:g}") for w in SCALES]
    cells += [dict(model="conditional", sampler="ddim", steps=50, guidance="classifier_free", scale=w, clip=clip,
                   row=f"classifier-free, {clip} thresholding", col=f"w = {w:g}")
              for clip in ("static", "dynamic") for w in (4.0, 8.0)]
    s.cells = tuple(cells)
    s.metrics = ("fid", "is")
    s.plot = dict(x="is_mean", y="fid", series="row", logx=False)
    s.num_samples = 500
    s.budget.train.num_steps = 2000
    return s


def claims(results, nll):
    by = {(r["row"], r["scale"]): r for r in results}
    cf = [by[("classifier-free", w)] for w in SCALES]
    is_up = all(b["is_mean"] >= a["is_mean"] - 0.05 for a, b in zip(cf, cf[1:]))
    best = min(SCALES, key=lambda w: by[("classifier-free", w)]["fid"])
    dyn, stat = by[("classifier-free, dynamic thresholding", 8.0)], by[("classifier-free, static thresholding", 8.0)]
    cg = [by[("classifier", w)] for w in SCALES]
    return [
        ("Classifier-free guidance raises the Inception Score as w grows", is_up,
         " → ".join(f"{r['is_mean']:.2f}" for r in cf)),
        ("FID is best at a small positive w and worsens at large w", 0.0 < best < max(SCALES),
         f"best w = {best:g}; FID " + " → ".join(metrics.fid_text(r) for r in cf)),
        ("Classifier guidance raises the Inception Score as the scale grows",
         cg[-1]["is_mean"] > cg[0]["is_mean"], f"{cg[0]['is_mean']:.2f} → {cg[-1]['is_mean']:.2f}"),
        ("Dynamic thresholding gives a better FID than static at large w (w = 8)",
         dyn["fid"] < stat["fid"], f"{metrics.fid_text(dyn)} vs {metrics.fid_text(stat)}"),
    ]
