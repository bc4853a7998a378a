"""A paper study in three jobs: ``plan`` (the models, classifiers and cells a study needs, and the
command behind each), ``measure`` (training what is missing, measuring each cell once, NLL,
pictures) and ``report`` (``report.md``: tables, plots, claims). ``experiments.reproduce`` is its
command line."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax

from diffusion import parallel
from experiments import scoring
from experiments.studies import measure, plan, report


def run_study(study_module, workdir, *, dataset=None, data=None, scale: str = "default", batch: int = 250,
              inception_weights=None, plan_only: bool = False) -> Optional[Path]:
    """Train what the study needs, measure its cells and write ``<workdir>/report.md``; returns its
    path. ``plan_only``: print the command behind every training and cell, in order, and run none.
    Data measured with Inception features (all but 28×28×1) without ``inception_weights`` is refused
    before anything trains."""
    study_plan = plan.make_plan(study_module, workdir, dataset=dataset, data=data, scale=scale,
                                inception_weights=inception_weights)
    if plan_only:
        print("\n".join(study_plan.commands))
        return None
    if scoring.uses_inception(study_plan.data_config) and not inception_weights:
        raise ValueError(f"{study_plan.dataset} is measured with Inception-v3 features (FID, and the autoencoders' "
                         f"rFID): give --inception_weights, pytorch-fid's {plan.INCEPTION_FILE}")
    measure.train(study_plan, inception_weights)
    measured = measure.measure(study_plan, parallel.make_mesh(), batch=batch, inception_weights=inception_weights)
    path = study_plan.workdir / "report.md"
    if jax.process_index() == 0:
        report.write(study_plan, measured, path)
        print(f"wrote {path}")
    return path
