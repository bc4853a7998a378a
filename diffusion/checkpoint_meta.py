"""What a checkpoint records beside the state, and whether it fits the run resuming from it.

The meta item of a checkpoint is the JSON object
``{"config": {...}, "data_position": int, "checksums": {"params/conv_in/kernel": [sum, weighted], ...}}``;
the data item, where the run saved its input pipeline, is the grain iterator's state, one JSON file
per process (grain's orbax ``CheckpointHandler``). A resumed run must agree with the saved config on
the fields that change what the parameters mean (``config_differences``); a saved iterator state is
restored only into an iterator of the same layout (``same_structure``).
"""
from __future__ import annotations

import flax

# Config fields that change what the parameters mean: a resumed run must agree on them
# ("first_stage": the latent-diffusion autoencoder of experiments.train_autoencoder).
COMPATIBILITY_SECTIONS = ("model", "diffusion", "first_stage")
COMPATIBILITY_FIELDS = ("data.image_size", "data.channels", "data.autoencoder", "data.latent_scale",
                        "data.low_resolution", "cascade.augmentation",   # a cascade stage's conditioning input
                        "optim.grad_accum_steps")   # state.step and MultiSteps' count are in its units


def compatibility_view(config: dict) -> dict:
    """The flattened fields that a checkpoint and a run must agree on (lists normalised from tuples)."""
    flat = flax.traverse_util.flatten_dict(config, sep=".")
    keep = {k: v for k, v in flat.items()
            if k.split(".")[0] in COMPATIBILITY_SECTIONS or k in COMPATIBILITY_FIELDS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in keep.items()}


def config_differences(saved: dict, current: dict) -> list[str]:
    """The compatibility fields on which a checkpoint's config and the current one differ. A field the
    checkpoint's config lacks was added to the code after it was saved, and the run was made with
    its default: it is not a difference (as ``runs.load_config`` fills it with that default)."""
    a, b = compatibility_view(saved), compatibility_view(current)
    return [f"{k}: checkpoint {a.get(k, '<absent>')!r} vs config {b.get(k, '<absent>')!r}"
            for k in sorted(a) if a.get(k) != b.get(k)]


def same_structure(a, b) -> bool:
    """Whether two JSON values have the same keys and list lengths throughout (two grain iterator
    states of the same pipeline layout)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_structure(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same_structure, a, b))
    return not isinstance(b, (dict, list))
