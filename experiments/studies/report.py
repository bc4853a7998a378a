"""A study's ``report.md``: the table of its cells (each entry the study's metrics, formatted by
``scoring.METRICS``), NLL per model with the bound's terms per step, the plot, the paper's
claims checked on the figures, the study's measured explanations of them (its ``findings``), the
pictures, and the commands behind every cell."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from experiments import scoring
from experiments.studies.measure import Measured
from experiments.studies.plan import PAPER_SAMPLES, Plan

AXIS_LABELS = {"steps": "sampling steps S", "is_mean": "Inception Score", "col": "", "fid": "FID",
               "class_match": "class match (share of samples of the prompt's class)",
               "nfe": "network evaluations (NFE)", "aug_level": "conditioning augmentation level s"}


def plot(study, results: list[dict], path: Path):
    """The study's plot: y against x for each series (x and y are cell fields or metrics), with
    error bars where the metric has a standard error (``fid_se``)."""
    spec = study.plot
    count = len(dict.fromkeys(r[spec.series] for r in results))
    fig = Figure(figsize=(7, 4 + 0.2 * count))     # room below the axes for a legend of every series
    ax = fig.subplots()
    for series in dict.fromkeys(r[spec.series] for r in results):
        rows = [r for r in results if r[spec.series] == series]
        errors = [r.get(f"{spec.y}_se") for r in rows]
        ax.errorbar([r[spec.x] for r in rows], [r[spec.y] for r in rows], yerr=None if None in errors else errors,
                    marker="o", capsize=3, label=str(series))
        if spec.x == "is_mean":
            for r in rows:
                ax.annotate(r["col"], (r[spec.x], r[spec.y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if spec.logx:
        ax.set_xscale("log")
    if spec.get("logy"):
        ax.set_yscale("log")
    ax.set_xlabel(AXIS_LABELS.get(spec.x, spec.x))
    ax.set_ylabel(AXIS_LABELS.get(spec.y, spec.y))
    ax.set_title("\n".join(textwrap.wrap(study.title, 90)), fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2 if count > 6 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def vlb_terms_plot(nll: dict, path: Path):
    """Each model's mean term of the bound (bits/dim) and ‖ε − ε̂‖² against the step t, as in Nichol &
    Dhariwal (2021), Fig. 2: where in the chain a model's NLL is spent."""
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    for m, v in nll.items():
        t = np.arange(1, len(v["per_step_bpd"]) + 1)
        left.plot(t, v["per_step_bpd"], lw=1, label=m)
        right.plot(t, v["per_step_eps_mse"], lw=1, label=m)
    left.set_ylabel("term of the bound (bits/dim); t = 1 is L_0")
    right.set_ylabel("‖ε − ε̂‖² per dimension")
    for ax in (left, right):
        ax.set_xlabel("diffusion step t")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cell_table(study, results: list[dict]) -> list[str]:
    """Rows × columns of the study's cells, each entry its metrics (in ``scoring.METRICS`` order, then
    ``scoring.PROMPT_METRICS``' for a study of cells drawn for prompts)."""
    shown = [metrics[m] for metrics in (scoring.METRICS, scoring.PROMPT_METRICS) for m in metrics
             if m in study.metrics]
    rows, cols = list(dict.fromkeys(r["row"] for r in results)), list(dict.fromkeys(r["col"] for r in results))
    by = {(r["row"], r["col"]): r for r in results}
    entry = lambda r: " · ".join(metric.entry(r) for metric in shown)
    lines = ["Entries: " + " · ".join(metric.legend for metric in shown) + ".", "",
             "| | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(entry(by[(row, c)]) if (row, c) in by else "–" for c in cols) + " |")
    return lines


def cost_table(results: list[dict]) -> list[str]:
    """Per cell, what it cost and its first stage (``measure.cost_record``, ``measure.first_stage_floors``):
    training steps and images/s, sampling images/s, the autoencoder's PSNR and rFID from its run,
    and the FID of its reconstructions of as many held-out images as the cell has samples (– for
    pixel diffusion), under which the held-out images' own FID at that count."""
    lines = ["", "| cell | training steps | training images/s | sampling images/s | autoencoder PSNR (dB) | "
             "autoencoder rFID | FID of reconstructions (as many as samples) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    pm = lambda r, k: f"{r[k]:.2f} ± {r[k + '_se']:.2f}" if k in r else "–"
    for r in results:
        lines.append(f"| {r['row']}, {r['col']} | {r['train_steps']:,} | {r['train_images_per_s']:.1f} | "
                     f"{r['sample_images_per_s']:.2f} | {pm(r, 'ae_psnr')} | {pm(r, 'ae_rfid')} | {pm(r, 'ae_fid')} |")
    if results and "heldout_fid" in results[0]:
        lines += ["", f"The held-out images themselves, as many: FID {pm(results[0], 'heldout_fid')} (the data's floor "
                  "at this count)."]
        n, num = results[0].get("floor_images"), results[0].get("num")
        if n is not None and num is not None and n < num:
            lines += ["", f"Only {n:,} held-out images exist, fewer than the cells' {num:,} samples: the "
                      "reconstructions' and held-out FIDs are measured on those, and FID is biased upwards at "
                      "fewer images, so they overstate the floor."]
    return lines


def nll_table(nll: dict) -> list[str]:
    """Each model's NLL, its terms and its largest L_t, and the plot of the terms per step."""
    lines = ["", "| model | NLL (bits/dim) ↓ | prior | decoder L_0 | Σ L_t | largest L_t |",
             "| --- | --- | --- | --- | --- | --- |"]
    for m, v in nll.items():
        i = int(np.argmax(v["per_step_bpd"][1:])) + 1          # index i holds step t = i + 1
        lines.append(f"| {m} | {v['bits_per_dim']:.3f} ± {v['stderr']:.3f} | {v['prior']:.4f} | "
                     f"{v['decoder_L0']:.3f} | {v['sum_Lt']:.3f} | {v['per_step_bpd'][i]:.3f} (t = {i + 1}) |")
    return lines + ["", "The bound's terms per step, with the ε-prediction error behind them:", "",
                    "![terms of the variational bound](vlb_terms.png)"]


def objective_table(objective: dict, reference: dict) -> list[str]:
    """Each model's held-out seed 004 objective, its first term and its mean gain per step over the
    reference ε_r = 0, and the plot of those gains per step."""
    first = lambda v: v["per_step"][0]
    gain = lambda v: np.mean(np.subtract(reference["per_step"][1:], v["per_step"][1:]))
    lines = ["", f"Seed 004's objective on {reference['num']} held-out images, Σ_t E[−log q_r(x_{{t−1}} | x_t)] in "
             "nats/dim over the T forward pairs (the seed's L up to sign and a constant; lower is better), for "
             "every model's own reverse Gaussian (its variance as trained), with ε_r = 0 (q_r = N(x_t, β_t): "
             "nothing learned) for reference:", "",
             "| model | Σ_t E[−log q_r] ↓ | t = 0: −log q_r(x_0 \\| x_1) | mean gain per step t ≥ 1 over ε_r = 0 |",
             "| --- | --- | --- | --- |"]
    for m, v in list(objective.items()) + [("ε_r = 0 (reference)", reference)]:
        lines.append(f"| {m} | {v['nats_per_dim']:.3f} ± {v['stderr']:.3f} | {first(v):.4f} | {gain(v):.5f} |")
    return lines + ["", "![gain per step over ε_r = 0](sddpm_terms.png)"]


def objective_plot(objective: dict, reference: dict, path: Path):
    """Each model's term E[−log q_r(x_{t−1} | x_t)] per step, as its gain over ε_r = 0."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab20"].colors
    for i, (m, v) in enumerate(objective.items()):
        ax.plot(np.arange(len(v["per_step"])), np.subtract(reference["per_step"], v["per_step"]), lw=1, label=m,
                color=colors[i % len(colors)])
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xlabel("schedule index t (pair x_{t−1}, x_t)")
    ax.set_ylabel("E[−log q_r] of ε_r = 0 minus the model's (nats/dim)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=6, ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def scale_note(plan: Plan, measured: Measured) -> str:
    """How far the study's models and sample counts are from the papers'."""
    if plan.scale == "paper":
        return plan.study.paper_scale_note or "at the papers' settings."
    if plan.study.scale_note:
        return plan.study.scale_note
    config = plan.data_config
    steps, batch_size = config.train.num_steps, config.train.batch_size
    epochs = steps * batch_size / measured.train_images
    return (f"each model trains {steps:,} steps at batch {batch_size} (~{epochs:.0f} epochs of "
            f"{measured.train_images:,} images) with {config.model.base_channels} base channels; the papers "
            f"train 35.7M-parameter (or larger) U-Nets for 500k–800k steps at batch 128 and compute FID "
            f"from {PAPER_SAMPLES:,} samples with Inception features, so absolute numbers are not comparable "
            f"and only the orderings are checked. `--scale paper` uses the papers' settings.")


def markdown(plan: Plan, measured: Measured, claims: list) -> str:
    """The text of ``report.md``; ``claims`` are the study's (text, held, figures)."""
    study, heldout = plan.study, measured.heldout
    features = (f"the classifier trained in {plan.classifier_weights}" if plan.classifier_weights
                else measured.feature_name)
    lines = [f"# {study.title}", "", f"Reproduces: {study.paper}.", "",
             f"Data: {plan.dataset} ({plan.data_config.data.source}); features: {features}; "
             f"{plan.num} samples per cell. Held-out real images against the training split: FID "
             f"{heldout['fid']:.2f}, IS {heldout['is_mean']:.2f} ± {heldout['is_std']:.2f} (the floor and ceiling).",
             "", f"**Scale.** {scale_note(plan, measured)}", ""]
    lines += cell_table(study, measured.results)
    if plan.autoencoders:
        lines += cost_table(measured.results)
    if measured.nll:
        lines += nll_table(measured.nll)
    if measured.objective:
        lines += objective_table(measured.objective, measured.objective_reference)
    lines += ["", "![plot](plot.png)", ""]
    if claims:
        lines += ["## The paper's claims at this scale", ""]
        lines += [f"- {'✓ reproduced' if held else '✗ not reproduced'}: {text} ({figures})"
                  for text, held, figures in claims]
        lines.append("")
    if plan.findings:
        lines += ["## What the measurements say about the figures", ""]
        lines += [f"- {text}" for text in plan.findings(measured.results)] + [""]
    if measured.pictures:
        lines += ["## Pictures", ""]
        for file, caption in measured.pictures:
            lines += [f"{caption}:", "", f"![{file}]({file})", ""]
    lines += ["## Commands behind each cell", "", "```bash"] + plan.commands + ["```", ""]
    return "\n".join(lines)


def write(plan: Plan, measured: Measured, path: Path):
    """``report.md`` at ``path`` with ``plot.png`` (and ``vlb_terms.png`` with NLL, ``sddpm_terms.png``
    with seed 004's objective) beside it."""
    plot(plan.study, measured.results, path.parent / "plot.png")
    if measured.nll:
        vlb_terms_plot(measured.nll, path.parent / "vlb_terms.png")
    if measured.objective:
        objective_plot(measured.objective, measured.objective_reference, path.parent / "sddpm_terms.png")
    claims = plan.claims(measured.results, measured.nll) if plan.claims else []
    path.write_text(markdown(plan, measured, claims))
