"""DDIM Table 1 (Song et al. 2021): FID over the number of steps S and η from one trained model;
η = σ̂ is DDPM's ancestral step with the larger variance β̂ on the respaced schedule.

python -m experiments.reproduce --study ddim_table1 --workdir runs/studies/ddim_table1
"""
from configs.studies import base

STEPS = (10, 20, 50, 100, 1000)
ETAS = (0.0, 0.2, 0.5, 1.0)


def get_config():
    s = base.get_config()
    s.title = "DDIM: sample quality over steps S and stochasticity η"
    s.paper = "Song, Meng & Ermon (2021), Denoising Diffusion Implicit Models, Table 1 and Figure 3"
    s.models = dict(ddpm=dict(diffusion=dict(variance="fixed_large")))
    cells = [dict(model="ddpm", sampler="ddim", steps=S, eta=eta, row=f"η = {eta:g}", col=f"S = {S}")
             for eta in ETAS for S in STEPS]
    cells += [dict(model="ddpm", sampler="ddpm", steps=S, row="η = σ̂", col=f"S = {S}") for S in STEPS]
    s.cells = tuple(cells)
    s.num_samples = 250
    return s


def claims(results, nll):
    """The paper's qualitative claims, each (text, held, figures)."""
    fid = {(r["row"], r["steps"]): r["fid"] for r in results}
    small = min(STEPS)
    eta0_best = all(fid[("η = 0", S)] <= min(fid[(row, S)] for row in {r for r, _ in fid}) for S in (10, 20))
    sigma_worst = all(fid[("η = σ̂", S)] >= max(fid[(row, S)] for row in {r for r, _ in fid}) for S in (10, 20))
    at_1000 = sorted(fid[(row, 1000)] for row in {r for r, _ in fid})
    sigma_best_1000 = fid[("η = σ̂", 1000)] <= at_1000[1]
    return [
        ("η = 0 (DDIM) has the best FID at small S (10 and 20 steps)", eta0_best,
         f"S = {small}: η = 0 {fid[('η = 0', small)]:.2f} vs η = 1 {fid[('η = 1', small)]:.2f}"),
        ("η = σ̂ is the worst at small S", sigma_worst, f"S = {small}: σ̂ {fid[('η = σ̂', small)]:.2f}"),
        ("η = σ̂ is best or second best at S = 1000", sigma_best_1000,
         f"S = 1000: σ̂ {fid[('η = σ̂', 1000)]:.2f}, best {at_1000[0]:.2f}"),
    ]
