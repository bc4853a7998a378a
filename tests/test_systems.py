"""The systems' hooks (experiments.systems): each answers only for its own configs, and the general
glue's dispatch gives what the system decides."""
import dataclasses

import jax.numpy as jnp

from configs import base
from configs.cascade import fashion_mnist_sr14to28
from configs.text import text_mnist
from experiments import build, systems
from experiments.protocol import System

HOOKS = [f.name for f in dataclasses.fields(System) if f.name not in ("name", "model_kinds", "context_encoders")]
ARGS = {"check": (None,), "data_shape": (None,), "make_model": (1, (28, 28, 1), False), "context_encoder": (False,),
        "conditioning": (jnp.zeros((2,), jnp.int32),), "condition_of": (None,), "grid_condition": (4,),
        "training_condition": (None,), "prepare_splits": ((),)}


def test_every_system_is_silent_on_a_plain_config():
    """A plain unconditional pixel U-Net is no system's: every hook answers None, {} or False (and
    every check passes)."""
    c = base.get_config()
    names = [s.name for s in systems.SYSTEMS]
    assert len(set(names)) == len(names)
    for system in systems.SYSTEMS:
        for hook in HOOKS:
            fn = getattr(system, hook)
            if fn is not None:
                assert fn(c, *ARGS.get(hook, ())) in (None, {}, False), (system.name, hook)


def test_the_text_system_conditions_on_token_ids():
    c = text_mnist.get_config()
    example = systems.first("example_condition", c)
    assert example.shape[0] == 1 and example.dtype == jnp.int32
    tokens = jnp.ones((3, example.shape[1]), jnp.int32)
    assert build.conditioning(c, tokens)["tokens"] is tokens
    assert build.grid_condition(c, 4).shape == (4, example.shape[1])
    assert build.grid_condition(base.get_config(), 4).tolist() == [0, 0, 0, 0]   # unconditional: class 0


def test_the_cascade_system_adds_the_low_resolution_inputs():
    c = fashion_mnist_sr14to28.get_config()
    inputs = systems.merged("init_inputs", c)
    assert set(inputs) == {"cond_image", "aug_level"} and inputs["cond_image"].shape == (1, 28, 28, 1)
    assert systems.first("training_condition", c, build.make_schedule(c)) is not None
    assert systems.merged("init_inputs", base.get_config()) == {}
