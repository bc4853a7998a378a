"""Reproduce a paper's comparison table: ``python -m experiments.reproduce --study ddim_table1 --workdir runs/studies/ddim_table1``.

A study (``configs/studies/<name>.py``) names the models it needs as overrides of a dataset's
config and the cells it measures. This trains each model (resuming, or skipping it when its last
checkpoint is at ``train.num_steps``), trains the feature classifier for 28×28 data other than the
embedded MNIST, measures every cell once (``<workdir>/cells/<cell>.json``; a rerun skips measured
cells) and writes ``<workdir>/report.md`` with the table, a PNG plot, the paper's claims checked
on the figures, and the commands behind each cell. ``--scale paper`` drops the study's CPU
budget and uses the papers' models, steps and 50,000 samples; ``--dataset cifar10`` switches data
(Inception features, ``--inception_weights``).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path

import jax
import matplotlib
import ml_collections
import numpy as np
from absl import flags, logging

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from configs import cifar10_ddpm, classifier_fashion_mnist, fashion_mnist, mnist, noisy_classifier_mnist  # noqa: E402
from diffusion import metrics, parallel, visualize  # noqa: E402
from diffusion.data import datasets  # noqa: E402
from diffusion.checkpoints import Checkpointer, config_differences  # noqa: E402
from experiments import cli, common, evaluation, sampling, trainer  # noqa: E402

# Per dataset: the config its models derive from (and its file, for the printed commands), and the
# feature classifier config for 28×28 data (None: the embedded MNIST classifier, or Inception).
DATASETS = {
    "fashion_mnist": (fashion_mnist, "configs/fashion_mnist.py", classifier_fashion_mnist),
    "mnist": (mnist, "configs/mnist.py", None),
    "cifar10": (cifar10_ddpm, "configs/cifar10_ddpm.py", None),
}
PAPER_SAMPLES = 50_000
CELL_DEFAULTS = dict(eta=0.0, guidance="", scale=0.0, clip=None)

flags.DEFINE_string("study", None, "A study in configs/studies (name) or a path to a study file.")
flags.DEFINE_string("workdir", None, "Where the study's models, measurements and report go.")
flags.DEFINE_enum("dataset", None, sorted(DATASETS), "Data for the study (default: the study's own).")
flags.DEFINE_string("data", None, "Path to the dataset's .npz (default: the dataset config's).")
flags.DEFINE_enum("scale", "default", ["default", "paper"], "The study's CPU budget, or the papers' settings.")
flags.DEFINE_integer("batch", 250, "Samples per compiled batch (a multiple of the device count).")
flags.DEFINE_string("inception_weights", None, "pytorch-fid's pt_inception-2015-12-05 weights (non-28×28 data).")
FLAGS = flags.FLAGS


def load_study(name: str):
    """The study module (its ``get_config`` and optional ``claims``) by name or file path."""
    if name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(name).stem, name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(f"configs.studies.{name}")
    except ModuleNotFoundError:
        known = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "studies").glob("*.py")
                       if p.stem not in ("__init__", "base"))
        raise ValueError(f"unknown study {name!r}; choose one of {known} or give a study file's path") from None


def model_config(study, name: str, dataset: str, scale: str, data=None) -> ml_collections.ConfigDict:
    """The dataset's config, brought to the study's budget (default scale), with the model's overrides."""
    if name not in study.models:
        raise ValueError(f"study cell names model {name!r}, which is not in its models {sorted(study.models)}")
    config = DATASETS[dataset][0].get_config()
    if data:
        config.data.source = data
    if scale == "default":
        config.update(study.budget.to_dict())
    config.update(study.models[name].to_dict())
    return config


def overrides(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> list[str]:
    """``--config.<field>=<value>`` for every field where ``config`` differs from ``reference``."""
    flat = lambda d, p="": ({k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{p}{k}.").items()}
                            if isinstance(d, dict) else {p[:-1]: d})
    mine, theirs = flat(config.to_dict()), flat(reference.to_dict())
    fmt = lambda v: ",".join(map(str, v)) if isinstance(v, (tuple, list)) else v
    return [f"--config.{k}={fmt(v)}" for k, v in mine.items() if theirs.get(k) != v]


def trained(config, workdir: Path) -> bool:
    """Whether ``workdir``'s last checkpoint is at ``train.num_steps``; a run there made with another
    model or schedule (a study file edited since) is an error, not a reason to reuse its results."""
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    try:
        step = ckpt.latest_step()
        diffs = [] if step is None else config_differences(ckpt.read_meta(step)["config"], config.to_dict())
    finally:
        ckpt.close()
    if diffs:
        raise ValueError(f"{workdir} holds a run made with a different model or schedule than the study asks for:\n  "
                         + "\n  ".join(diffs) + f"\nuse a new --workdir, or move {workdir} and the study's cells/ "
                         "aside to retrain and remeasure")
    return step == config.train.num_steps


def ensure_model(config, workdir: Path):
    if not trained(config, workdir):
        trainer.train_and_evaluate(config, workdir)


def ensure_classifier(config, config_module, workdir: Path, study, scale: str, commands: list) -> Path:
    """Train (or reuse) a classifier configured from ``config_module``, its steps cut to the study's
    budget at the default scale, and record the command that trains it; returns its ``classifier.msgpack``."""
    if scale == "default":
        config.train.num_steps = study.classifier_steps
    if not trained(config, workdir) or not (workdir / "classifier.msgpack").exists():
        trainer.train_classifier(config, workdir)
    config_file = f"configs/{config_module.__name__.split('.')[-1]}.py"
    commands.append(f"python -m experiments.train_classifier --config {config_file} --workdir {workdir} "
                    + " ".join(overrides(config, config_module.get_config())))
    return workdir / "classifier.msgpack"


def cell_name(cell: dict) -> str:
    tag = evaluation.setting_tag(cell["sampler"], cell["steps"], cell.get("eta", 0.0), cell.get("guidance", ""),
                                 cell.get("scale", 0.0), cell.get("clip"))
    return re.sub(r"\W+", "_", f"{cell['model']}_{tag}")


def plot(study, results: list[dict], path: Path):
    """The study's plot: y against x for each series (x and y are cell fields or metrics), with
    error bars where the metric has a standard error (``fid_se``)."""
    spec = study.plot
    fig, ax = plt.subplots(figsize=(6, 4))
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
    ax.set_xlabel({"steps": "sampling steps S", "is_mean": "Inception Score", "col": ""}.get(spec.x, spec.x))
    ax.set_ylabel({"fid": "FID"}.get(spec.y, spec.y))
    ax.set_title(study.title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def vlb_terms_plot(nll: dict, path: Path):
    """Each model's mean term of the bound (bits/dim) and ‖ε − ε̂‖² against the step t, as in Nichol &
    Dhariwal (2021), Fig. 2: where in the chain a model's NLL is spent."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
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
    plt.close(fig)


def entry(r: dict, shown) -> str:
    """One table cell: the study's ``metrics`` measured for cell ``r``."""
    parts = []
    if "fid" in shown:
        parts.append(metrics.fid_text(r))
    if "is" in shown:
        parts.append(f"IS {r['is_mean']:.2f} ± {r['is_std']:.2f}")
    if "confident" in shown:
        parts.append(f"{100 * r['confident_0.9']:.0f}% ≥ 0.9")
    return " · ".join(parts)


def report(study, results: list[dict], nll: dict, heldout: dict, context: dict) -> str:
    rows, cols = list(dict.fromkeys(r["row"] for r in results)), list(dict.fromkeys(r["col"] for r in results))
    by = {(r["row"], r["col"]): r for r in results}
    described = {"fid": "FID ↓ ± its jackknife standard error over the cell's samples", "is": "Inception Score ↑",
                 "confident": "share of samples classified with confidence ≥ 0.9"}
    what = " · ".join(described[m] for m in study.metrics if m != "nll")
    lines = [f"# {study.title}", "", f"Reproduces: {study.paper}.", "",
             f"Data: {context['dataset']} ({context['source']}); features: {context['features']}; "
             f"{context['num']} samples per cell. Held-out real images against the training split: "
             f"FID {heldout['fid']:.2f}, IS {heldout['is_mean']:.2f} ± {heldout['is_std']:.2f} (the floor and ceiling).",
             "", f"**Scale.** {context['scale_note']}", "", f"Entries: {what}.", "",
             "| | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(entry(by[(row, c)], study.metrics) if (row, c) in by else "–"
                                                 for c in cols) + " |")
    if nll:
        lines += ["", "| model | NLL (bits/dim) ↓ | prior | decoder L_0 | Σ L_t | largest L_t |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for m, v in nll.items():
            i = int(np.argmax(v["per_step_bpd"][1:])) + 1          # index i holds step t = i + 1
            lines.append(f"| {m} | {v['bits_per_dim']:.3f} ± {v['stderr']:.3f} | {v['prior']:.4f} | "
                         f"{v['decoder_L0']:.3f} | {v['sum_Lt']:.3f} | {v['per_step_bpd'][i]:.3f} (t = {i + 1}) |")
        lines += ["", "The bound's terms per step, with the ε-prediction error behind them:", "",
                  "![terms of the variational bound](vlb_terms.png)"]
    lines += ["", "![plot](plot.png)", ""]
    if context["claims"]:
        lines += ["## The paper's claims at this scale", ""]
        lines += [f"- {'✓ reproduced' if held else '✗ not reproduced'}: {text} ({figures})"
                  for text, held, figures in context["claims"]]
        lines.append("")
    if context["pictures"]:
        lines += ["## Pictures", ""]
        for file, caption in context["pictures"]:
            lines += [f"{caption}:", "", f"![{file}]({file})", ""]
    lines += ["## Commands behind each cell", "", "```bash"] + context["commands"] + ["```", ""]
    return "\n".join(lines)


def pictures(run, mesh, heldout, name: str, images: np.ndarray, setting: str, steps: int,
             out: Path) -> list[tuple[str, str]]:
    """(file, caption) of a grid of 64 samples drawn with ``setting`` and of 8 held-out images over
    their DDIM encode-then-decode."""
    grid = visualize.save_png(visualize.image_grid(images[:64]), out / f"{name}_samples.png", scale=2)
    n = 8 + -8 % mesh.devices.size
    x0 = datasets.to_model_range(heldout.images[:n])
    z, decoded = sampling.reconstruct(run, mesh, x0, heldout.labels[:n], steps)
    rows = np.concatenate([x0, np.clip(z / 3, -1, 1), np.clip(decoded, -1, 1)])
    recon = visualize.save_png(visualize.image_grid(datasets.to_uint8(rows), ncols=n),
                               out / f"{name}_reconstruction.png", scale=2)
    return [(grid.name, f"{name}: 64 samples, {setting}"),
            (recon.name, f"{name}: 8 held-out images (top), their {steps}-step DDIM latents x_T (middle, ÷ 3) and "
                         f"those latents decoded with {steps} DDIM steps (bottom)")]


def run_study(study_module, workdir, *, dataset=None, data=None, scale: str = "default", batch: int = 250,
              inception_weights=None) -> Path:
    """Train what the study needs, measure its cells and write ``<workdir>/report.md``; returns its path."""
    study = study_module.get_config()
    dataset = dataset or study.dataset
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    workdir = Path(workdir)
    (workdir / "cells").mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh()
    num = PAPER_SAMPLES if scale == "paper" else study.num_samples
    base_module, base_file, classifier_module = DATASETS[dataset]
    reference = base_module.get_config()

    configs = {m: model_config(study, m, dataset, scale, data) for m in study.models}
    commands = []
    for m, config in configs.items():
        ensure_model(config, workdir / "models" / m)
        commands.append(f"python -m experiments.train --config {base_file} --workdir {workdir / 'models' / m} "
                        + " ".join(overrides(config, reference)))
    any_config = next(iter(configs.values()))
    classifier_weights = None
    if classifier_module is not None:
        c = classifier_module.get_config()
        c.data = any_config.data
        classifier_weights = str(ensure_classifier(c, classifier_module, workdir / "feature_classifier",
                                                   study, scale, commands))
    noisy = None
    if study.noisy_classifier:
        c = noisy_classifier_mnist.get_config()
        model_side = configs[study.noisy_classifier]
        c.data, c.diffusion = model_side.data, model_side.diffusion
        c.model.update(model_side.model.to_dict())
        c.data.class_dropout = 0.0
        noisy = workdir / "noisy_classifier"
        ensure_classifier(c, noisy_classifier_mnist, noisy, study, scale, commands)

    train_split, heldout = common.load_data(any_config)
    feature_name, feature_fn = evaluation.make_feature_fn(any_config, mesh, "auto", classifier_weights,
                                                          inception_weights)
    ref_stats, _ = evaluation.reference_stats(any_config, feature_name, feature_fn, "train", train_split,
                                              workdir / "reference_stats")
    heldout_row = evaluation.quality(*feature_fn(heldout.images), ref_stats)

    runs, results, picture_files = {}, [], []
    for cell in study.cells:
        path = workdir / "cells" / f"{cell_name(cell)}.json"
        if path.exists() and json.loads(path.read_text())["num"] == num:
            results.append(json.loads(path.read_text()))
            continue
        m = cell["model"]
        if m not in runs:
            runs[m] = sampling.load_run(workdir / "models" / m)
        guide = cell.get("guidance", "")
        classifier = sampling.load_noisy_classifier(noisy, runs[m].schedule) if guide == "classifier" else None
        images = evaluation.samples_for(runs[m], mesh, workdir / "models" / m, cell["sampler"], cell["steps"],
                                        cell.get("eta", 0.0), num=num, batch=batch, seed=0, guide=guide,
                                        scale=cell.get("scale", 0.0), classifier_log_prob=classifier,
                                        clip=cell.get("clip"))
        row = {**CELL_DEFAULTS, **cell, **evaluation.quality(*feature_fn(images), ref_stats)}
        if jax.process_index() == 0:
            path.write_text(json.dumps(row, indent=2))
        results.append(row)
    for r in results:
        setting = f"{r['sampler']}:{r['steps']}" + (f":{r['eta']:g}" if r["sampler"] == "ddim" else "")
        guided = f" --guidance {r['guidance']} --scale {r['scale']:g}" if r["guidance"] else ""
        guided += f" --classifier_workdir {noisy}" if r["guidance"] == "classifier" else ""
        clip = f"  # x̂_0 thresholding: {r['clip'] or 'none'}" if r["clip"] is not None else ""
        commands.append(f"python -m experiments.evaluate --workdir {workdir / 'models' / r['model']} --samplers {setting} "
                        f"--num {num}{guided}" + (f" --classifier_weights {classifier_weights}" if classifier_weights else "")
                        + clip)

    nll = {}
    if "nll" in study.metrics:
        for m in study.models:
            path = workdir / "models" / m / "eval" / f"nll_{study.nll_examples}.json"
            nll[m] = json.loads(path.read_text()) if path.exists() else {}
            if "per_step_bpd" not in nll[m]:           # not measured yet, or measured before the per-step terms
                runs.setdefault(m, sampling.load_run(workdir / "models" / m))
                nll[m] = evaluation.nll_bits_per_dim(runs[m], mesh, heldout, study.nll_examples)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(nll[m]))
    if study.reconstruct_steps:
        for m in study.models:
            runs.setdefault(m, sampling.load_run(workdir / "models" / m))
            first = next(r for r in study.cells if r["model"] == m)
            images = evaluation.samples_for(runs[m], mesh, workdir / "models" / m, first["sampler"], first["steps"],
                                            first.get("eta", 0.0), num=num, batch=batch, seed=0)
            setting = f"{first['sampler'].upper()} {first['steps']}" + (
                f" (η = {first.get('eta', 0.0):g})" if first["sampler"] == "ddim" else "")
            picture_files += pictures(runs[m], mesh, heldout, m, images, setting, study.reconstruct_steps, workdir)

    if jax.process_index() != 0:
        return workdir / "report.md"
    plot(study, results, workdir / "plot.png")
    if nll:
        vlb_terms_plot(nll, workdir / "vlb_terms.png")
    claims = study_module.claims(results, nll) if hasattr(study_module, "claims") else []
    steps, batch_size = any_config.train.num_steps, any_config.train.batch_size
    epochs = steps * batch_size / len(train_split)
    paper_note = ("at the papers' settings" if scale == "paper" else
                  f"each model trains {steps:,} steps at batch {batch_size} (~{epochs:.0f} epochs of "
                  f"{len(train_split):,} images) with {any_config.model.base_channels} base channels; the papers "
                  f"train 35.7M-parameter (or larger) U-Nets for 500k–800k steps at batch 128 and compute FID "
                  f"from {PAPER_SAMPLES:,} samples with Inception features, so absolute numbers are not comparable "
                  f"and only the orderings are checked. `--scale paper` uses the papers' settings")
    features = f"the classifier trained in {classifier_weights}" if classifier_weights else feature_name
    context = dict(dataset=dataset, source=any_config.data.source, features=features, num=num,
                   scale_note=paper_note + ".", claims=claims, pictures=picture_files, commands=commands)
    path = workdir / "report.md"
    path.write_text(report(study, results, nll, heldout_row, context))
    print(f"wrote {path}")
    return path


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    run_study(load_study(FLAGS.study), FLAGS.workdir, dataset=FLAGS.dataset, data=FLAGS.data, scale=FLAGS.scale,
              batch=FLAGS.batch, inception_weights=FLAGS.inception_weights)


if __name__ == "__main__":
    flags.mark_flags_as_required(["study", "workdir"])
    cli.run(main)
