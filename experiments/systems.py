"""The systems the general glue knows, one line each: a new system is its hook module and a line here."""
from __future__ import annotations

from typing import Optional

import ml_collections

from experiments.cascade import hooks as cascade
from experiments.latent import hooks as latent
from experiments.protocol import System
from experiments.sddpm import hooks as sddpm
from experiments.text import hooks as text
from experiments.unclip import hooks as unclip

SYSTEMS: tuple[System, ...] = (latent.SYSTEM, cascade.SYSTEM, text.SYSTEM, unclip.SYSTEM, sddpm.SYSTEM)


def check(config: ml_collections.ConfigDict, autoencoder: Optional[ml_collections.ConfigDict] = None):
    """Every system's ``check`` of ``config``, in the table's order."""
    for system in SYSTEMS:
        if system.check is not None:
            system.check(config, autoencoder)


def first(hook: str, *args):
    """The first answer other than None of the systems' ``hook`` (``System``'s field of that name)."""
    for system in SYSTEMS:
        fn = getattr(system, hook)
        answer = fn(*args) if fn is not None else None
        if answer is not None:
            return answer
    return None


def merged(hook: str, *args) -> dict:
    """The union of the dicts the systems' ``hook`` answers (None counts as empty)."""
    out = {}
    for system in SYSTEMS:
        fn = getattr(system, hook)
        out.update((fn(*args) if fn is not None else None) or {})
    return out


def any_system(hook: str, *args) -> bool:
    """Whether any system's ``hook`` answers True."""
    return any(getattr(system, hook)(*args) for system in SYSTEMS if getattr(system, hook) is not None)


def model_kinds() -> tuple[str, ...]:
    return tuple(kind for system in SYSTEMS for kind in system.model_kinds)


def context_encoders() -> tuple[str, ...]:
    return tuple(encoder for system in SYSTEMS for encoder in system.context_encoders)
