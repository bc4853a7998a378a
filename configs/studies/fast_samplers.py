"""Fast samplers: FID against the number of network evaluations (NFE) for DDIM, DPM-Solver++(2M)
(Lu et al. 2022b), singlestep DPM-Solver-3 (Lu et al. 2022a), Heun on the Karras σ grid and Euler
ancestral (Karras et al. 2022), all from one trained model. Each sampler gets the most steps that
fit the NFE budget (``samplers.steps_within``: Heun spends 2 evaluations a step, DPM-Solver-3 up
to 3), so a cell's NFE may be one or two under the budget; the plot and claims use the actual NFE.

python -m experiments.reproduce --study fast_samplers --workdir runs/studies/fast_samplers_fashion
python -m experiments.reproduce --study fast_samplers --dataset mnist --workdir runs/studies/fast_samplers_mnist
(--dataset mnist trains configs/base.py, Ho et al.'s L_simple recipe rather than configs/mnist.py's, 1.5× as long.)
"""
from configs.studies import base
from diffusion import metrics, samplers, schedules

BUDGETS = (5, 10, 20, 50, 100)
SCHEDULE = schedules.make_schedule("linear", 1000)   # both datasets' configs (base.py's diffusion)
FULL_RANGE = ("ddim", "dpmpp_2m")    # the others stop at 50 NFE: 100 would double the study's CPU time
SOLVERS = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)", "dpm_solver_3": "DPM-Solver-3",
           "heun": "Heun (EDM)", "euler_ancestral": "Euler ancestral"}


def get_config():
    s = base.get_config()
    s.title = "Fast samplers: FID against network evaluations"
    s.paper = ("Lu et al. (2022), DPM-Solver and DPM-Solver++; Karras et al. (2022), EDM, Figure 2 and Algorithm 2; "
               "against DDIM (Song et al. 2021)")
    s.models = dict(ddpm=dict(train=dict(num_steps=4500)))
    cells = []
    for name, label in SOLVERS.items():
        for budget in BUDGETS if name in FULL_RANGE else BUDGETS[:-1]:
            steps = samplers.steps_within(name, SCHEDULE, budget)
            cells.append(dict(model="ddpm", sampler=name, steps=steps,
                              nfe=samplers.network_evaluations(name, SCHEDULE, steps),
                              row=label, col=f"NFE ≤ {budget}"))
    s.cells = tuple(cells)
    s.plot = dict(x="nfe", y="fid", series="row", logx=True, logy=True)
    s.num_samples = 400
    return s


def sigmas(name: str, budget: int) -> str:
    """The σ = √((1 − ᾱ)/ᾱ) of a sampler's grid within ``budget`` network evaluations, as text."""
    _, _, timesteps = samplers.plan(name, SCHEDULE, samplers.steps_within(name, SCHEDULE, budget))
    return ", ".join(f"{float(SCHEDULE.sqrt_recipm1_alphas_cumprod[t]):.3g}" for t in timesteps)


def claims(results, nll):
    """The papers' claims, each (text, held, figures); figures carry FID ± its standard error."""
    cell = {(r["sampler"], r["col"]): r for r in results}
    show = lambda name, budget: (f"{SOLVERS[name]} at {cell[(name, f'NFE ≤ {budget}')]['nfe']} NFE "
                                 f"{metrics.fid_text(cell[(name, f'NFE ≤ {budget}')])}")
    fid = lambda name, budget: cell[(name, f"NFE ≤ {budget}")]["fid"]
    se = lambda name, budget: cell[(name, f"NFE ≤ {budget}")].get("fid_se", 0.0)
    two_se = lambda a, b: 2 * (se(*a) ** 2 + se(*b) ** 2) ** 0.5     # of the difference of two cells' FIDs
    no_worse = lambda a, b: fid(*a) <= fid(*b) + two_se(a, b)
    beats = lambda a, b: fid(*a) + two_se(a, b) < fid(*b)
    return [
        ("DPM-Solver++(2M) at 10–20 NFE reaches the FID DDIM needs 50–100 for (no worse within 2 s.e.)",
         no_worse(("dpmpp_2m", 20), ("ddim", 50)),
         f"{show('dpmpp_2m', 10)}, {show('dpmpp_2m', 20)}; {show('ddim', 50)}, {show('ddim', 100)}"),
        ("Goal: DPM-Solver++(2M) at 20 NFE no worse than DDIM at 100 (within 2 s.e.)",
         no_worse(("dpmpp_2m", 20), ("ddim", 100)), f"{show('dpmpp_2m', 20)}; {show('ddim', 100)}"),
        ("Heun's second order beats Euler (DDIM is Euler's method on the same ODE, on its own grid) at equal "
         "NFE, 10–50", all(fid("heun", b) < fid("ddim", b) for b in (10, 20, 50)),
         "; ".join(f"{show('heun', b)} vs {show('ddim', b)}" for b in (10, 20, 50))
         + f". Within 10 NFE Heun has {samplers.steps_within('heun', SCHEDULE, 10)} points of σ: {sigmas('heun', 10)}; "
         f"DDIM has {sigmas('ddim', 10)}"),
        ("Stochastic sampling corrects an imperfect model's errors at larger NFE: Euler ancestral beats every "
         "ODE solver at 50 NFE by more than 2 s.e. (Karras et al. 2022, §4)",
         all(beats(("euler_ancestral", 50), (n, 50))
             for n in ("ddim", "dpmpp_2m", "dpm_solver_3", "heun")),
         "; ".join(show(n, 50) for n in ("euler_ancestral", "ddim", "dpmpp_2m", "dpm_solver_3", "heun"))),
        ("DPM-Solver-3 beats DDIM at equal NFE, 10–20 (by more than 2 s.e.)",
         all(beats(("dpm_solver_3", b), ("ddim", b))
             for b in (10, 20)),
         "; ".join(f"{show('dpm_solver_3', b)} vs {show('ddim', b)}" for b in (10, 20))),
    ]
