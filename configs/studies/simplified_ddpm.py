"""The simplified DDPM of seed 004: constant β = 0.2 with T = 50 on 28×28 digits, against the
linear schedule with T = 1000; samples and DDIM encode-then-decode pictures of both.

python -m experiments.reproduce --study simplified_ddpm --workdir runs/studies/simplified_ddpm
"""
from configs.studies import base
from diffusion import metrics


def get_config():
    s = base.get_config()
    s.title = "A simplified DDPM: constant β = 0.2, T = 50"
    s.paper = "seed 004 (constant-β DDPM on 28×28 digits) against Ho et al. (2020)"
    s.dataset = "mnist"
    s.models = dict(constant_T50=dict(diffusion=dict(schedule="constant", num_steps=50)),
                    linear_T1000=dict(diffusion=dict(schedule="linear", num_steps=1000)))
    s.cells = (dict(model="constant_T50", sampler="ddpm", steps=50, row="constant β = 0.2, T = 50", col="DDPM, all steps"),
               dict(model="constant_T50", sampler="ddim", steps=50, row="constant β = 0.2, T = 50", col="DDIM 50"),
               dict(model="linear_T1000", sampler="ddpm", steps=1000, row="linear β, T = 1000", col="DDPM, all steps"),
               dict(model="linear_T1000", sampler="ddim", steps=50, row="linear β, T = 1000", col="DDIM 50"))
    s.metrics = ("fid", "is", "confident")
    s.plot = dict(x="col", y="fid", series="row", logx=False)
    s.reconstruct_steps = 50
    s.num_samples = 500
    return s


def claims(results, nll):
    by = {(r["model"], r["col"]): r for r in results}
    const, lin = by[("constant_T50", "DDPM, all steps")], by[("linear_T1000", "DDPM, all steps")]
    return [
        ("The constant-β, T = 50 model draws recognisable digits (≥ 50% of samples classified with ≥ 0.9 confidence)",
         const["confident_0.9"] >= 0.5, f"{100 * const['confident_0.9']:.1f}%"),
        ("It does so with 20× fewer network evaluations than the T = 1000 model, at a worse FID",
         const["fid"] >= lin["fid"], f"FID {metrics.fid_text(const)} (50 steps) vs {metrics.fid_text(lin)} (1000 steps)"),
    ]
