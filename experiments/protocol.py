"""What a system (latent diffusion, cascades, text conditioning, unCLIP, seed 004's SDDPM) gives the
general glue: one record of hooks, listed once in ``experiments.systems.SYSTEMS``.

A hook module (``experiments/<system>/hooks.py``) imports the library and ``experiments.runs`` only,
never the general glue that consults it, so the import graph stays one-way: general glue → the table
→ the systems' hooks → the library.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import ml_collections

Config = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class System:
    """A system's contribution; every hook is optional and answers None (or False) for a config that
    is not the system's, so the general glue asks every system in the table's order.

    - ``check(config, autoencoder)``: refuse a config the system cannot run, or the system's fields
      set where it is not used, naming ``config.<section>.<field>`` and the fix (``autoencoder``: a
      latent run's first-stage config when it is not trained yet, as in a study's plan).
    - ``data_shape(config, autoencoder)``: the shape of one x_0 where the system decides it.
    - ``model_kinds``, ``context_encoders``: the ``model.kind`` and ``model.context_encoder`` values
      (τθ) the system provides.
    - ``make_model(config, out_channels, shape, load_frozen)``: the network of one of its kinds.
    - ``context_encoder(config, load_frozen)``: the U-Net's τθ module.
    - ``unet_fields(config)``: U-Net constructor arguments the system sets.
    - ``example_condition(config)``: one example of what the network is conditioned on, at init.
    - ``init_inputs(config)``: further network inputs (one example each) that shape parameters.
    - ``conditioning(config, condition)``: the network's conditioning arguments for ``condition``.
    - ``condition_of(config, split)``: each example's condition, from a data split.
    - ``grid_condition(config, n)``: the conditions a training grid of ``n`` samples is drawn for.
    - ``training_condition(config, schedule)``: ``training.train_step``'s per-batch condition maker.
    - ``prepare_splits(config, splits)``: the (train, held-out) splits as the system trains on them.
    - ``transforms_records(config)``: whether the system transforms a split whole before training
      (so its records cannot be streamed lazily).
    """
    name: str
    check: Optional[Callable[[Config, Optional[Config]], None]] = None
    data_shape: Optional[Callable[[Config, Optional[Config]], Optional[tuple]]] = None
    model_kinds: tuple[str, ...] = ()
    context_encoders: tuple[str, ...] = ()
    make_model: Optional[Callable] = None
    context_encoder: Optional[Callable] = None
    unet_fields: Optional[Callable[[Config], Optional[dict]]] = None
    example_condition: Optional[Callable] = None
    init_inputs: Optional[Callable[[Config], Optional[dict]]] = None
    conditioning: Optional[Callable] = None
    condition_of: Optional[Callable] = None
    grid_condition: Optional[Callable] = None
    training_condition: Optional[Callable] = None
    prepare_splits: Optional[Callable] = None
    transforms_records: Optional[Callable[[Config], bool]] = None
