"""A paper study in three jobs: ``plan`` (the models, classifiers and cells a study needs, and the
command behind each), ``measure`` (training what is missing, measuring each cell once, NLL,
pictures) and ``report`` (``report.md``: tables, plots, claims). ``experiments.reproduce`` is its
command line."""
from __future__ import annotations

from pathlib import Path

import jax

from diffusion import parallel
from experiments.studies import measure, plan, report


def run_study(study_module, workdir, *, dataset=None, data=None, scale: str = "default", batch: int = 250,
              inception_weights=None) -> Path:
    """Train what the study needs, measure its cells and write ``<workdir>/report.md``; returns its path."""
    study_plan = plan.make_plan(study_module, workdir, dataset=dataset, data=data, scale=scale)
    measure.train(study_plan, inception_weights)
    measured = measure.measure(study_plan, parallel.make_mesh(), batch=batch, inception_weights=inception_weights)
    path = study_plan.workdir / "report.md"
    if jax.process_index() == 0:
        report.write(study_plan, measured, path)
        print(f"wrote {path}")
    return path
