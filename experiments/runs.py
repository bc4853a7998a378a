"""A run's saved config and checkpoint entries read back for inference: the helpers below every
loader (``inference.load_run``, ``first_stage.load_autoencoder``, a latent run's decoder)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import jax
import ml_collections
import numpy as np

from configs import base
from diffusion import parallel
from diffusion.checkpoints import Checkpointer


def _tuples(value):
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(value) if isinstance(value, list) else value


def load_config(workdir) -> ml_collections.ConfigDict:
    """The run's saved config over today's defaults (a run saved before a field existed gets its default)."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a training run's workdir")
    config = base.get_config()
    config.update(_tuples(json.loads(path.read_text())))
    if config.sample.clip == "":       # runs saved when "" spelled no thresholding
        config.sample.clip = "none"
    return config


def replicated_like(abstract):
    """Shapes and dtypes of ``abstract`` (a tree of ``ShapeDtypeStruct``) placed replicated on every
    device: a restore template."""
    rep = parallel.replicated(parallel.make_mesh())
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), abstract)


def host_copy(tree):
    """Host (NumPy) copies of a tree of replicated arrays: what a compiled function may close over as
    constants, which a global array spanning several processes could not be."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)


def restore_partial(workdir, template: dict, config, step: Optional[int], entry_point: str) -> tuple[dict, dict]:
    """(state, meta) of ``workdir``'s latest (or ``step``'s) checkpoint, reading only ``template``'s
    entries (for inference: the EMA parameters, no optimizer state); a workdir without a
    checkpoint is an error naming ``python -m experiments.<entry_point>``."""
    ckpt = Checkpointer(Path(workdir) / "checkpoints")
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first with "
                                    f"python -m experiments.{entry_point} --workdir {workdir}")
        return ckpt.restore(template, config=config.to_dict(), step=step, partial=True)
    finally:
        ckpt.close()
