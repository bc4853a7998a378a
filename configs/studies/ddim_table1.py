"""DDIM Table 1 (Song et al. 2021): FID over the number of steps S and η from one trained model;
η = σ̂ is DDPM's ancestral step with the larger variance β̂ on the respaced schedule.

python -m experiments.reproduce --study ddim_table1 --workdir runs/studies/ddim_table1
"""
from configs.studies import base
from diffusion import metrics

STEPS = (10, 20, 50, 100, 1000)
ETAS = (0.0, 0.2, 0.5, 1.0)


def get_config():
    s = base.get_config()
    s.title = "DDIM: sample quality over steps S and stochasticity η"
    s.paper = "Song, Meng & Ermon (2021), Denoising Diffusion Implicit Models, Table 1 and Figure 3"
    # DDIM samples Ho et al.'s L_simple models (ADM's ImageNet-64 config would train the hybrid loss).
    s.models = dict(ddpm=dict(diffusion=dict(variance="fixed_large", loss="simple")))
    cells = [dict(model="ddpm", sampler="ddim", steps=S, eta=eta, row=f"η = {eta:g}", col=f"S = {S}")
             for eta in ETAS for S in STEPS]
    cells += [dict(model="ddpm", sampler="ddpm", steps=S, row="η = σ̂", col=f"S = {S}") for S in STEPS]
    s.cells = tuple(cells)
    s.num_samples = 250
    s.reconstruct_steps = 100          # sample grid and DDIM encode-then-decode pictures (Song et al. §5.4)
    return s


def claims(results, nll):
    """The paper's qualitative claims, each (text, held, figures); figures carry FID ± its standard error."""
    cell = {(r["row"], r["steps"]): r for r in results}
    rows = list(dict.fromkeys(r["row"] for r in results))
    fid = lambda row, S: cell[(row, S)]["fid"]
    best = lambda S: min(rows, key=lambda row: fid(row, S))
    show = lambda row, S: f"{row} {metrics.fid_text(cell[(row, S)])}"
    eta0_best = all(best(S) == "η = 0" for S in (10, 20))
    sigma_worst = all(max(rows, key=lambda row: fid(row, S)) == "η = σ̂" for S in (10, 20))
    at_1000 = sorted(rows, key=lambda row: fid(row, 1000))
    return [
        ("η = 0 (DDIM) has the best FID at small S (10 and 20 steps)", eta0_best,
         "; ".join(f"S = {S}: {show('η = 0', S)}, best {show(best(S), S)}" for S in (10, 20))),
        ("η = σ̂ is the worst at small S", sigma_worst,
         "; ".join(f"S = {S}: {show('η = σ̂', S)}, best {show(best(S), S)}" for S in (10, 20))),
        ("η = σ̂ is best or second best at S = 1000", "η = σ̂" in at_1000[:2],
         f"S = 1000: {show('η = σ̂', 1000)}, best {show(at_1000[0], 1000)}"),
    ]
