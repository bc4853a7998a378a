"""Sharded parameters (FSDP over the mesh's ``fsdp`` axis) and gradient accumulation: each equals the
replicated, large-batch step; checkpoints move between meshes."""
from functools import lru_cache

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from benchmarks import memory
from configs import base
from diffusion import parallel, training
from diffusion.data import datasets
from experiments import build, loop
from tiny_configs import shrink, step_batch

TOL = dict(rtol=1e-5, atol=1e-5)


def tiny(**fields):
    """The shared tiny run with Adam's ε at 1e-3: the gradient of a bias that a GroupNorm follows is
    zero in exact arithmetic, float noise that depends on the reduction order, and Adam's m/(√v + ε)
    turns noise that is large next to ε into steps of ±lr; beside ε = 1e-3 it stays noise."""
    c = shrink(base.get_config())
    c.optim.eps = 1e-3
    for name, value in fields.items():
        section, field = name.split("__")
        c[section][field] = value
    return c


@lru_cache(maxsize=None)
def initial_params():
    """The tiny U-Net's initial parameters as host arrays (a donated step cannot consume them)."""
    c = tiny()
    params = jax.jit(lambda key: build.init_params(build.make_model(c), c, key))(jax.random.key(c.seed))
    return jax.tree.map(np.asarray, params)


def run_steps(c, mesh, batches):
    """(state, [(params, EMA) as host arrays after each call]): one jitted ``train_step`` call per
    batch on a state laid out by ``fsdp_shardings``."""
    model, schedule, tx = build.make_model(c), build.make_schedule(c), build.make_optimizer(c)
    state = training.create_train_state(jax.random.key(c.seed), initial_params(), tx, schedule.num_steps)
    state = jax.device_put(state, parallel.fsdp_shardings(state, mesh))
    step = loop.jit_step(loop.make_train_step(c, model, schedule, tx), state, mesh)
    seen = []
    for batch in batches:
        state, _ = step(state, parallel.global_batch(batch, mesh))
        seen.append(jax.tree.map(np.asarray, (state.params, state.ema_params)))
    return state, seen


def assert_states_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


def test_fsdp_spec_splits_the_largest_divisible_dimension():
    assert parallel.fsdp_spec((3, 3, 64, 128), 4) == P(None, None, None, "fsdp")
    assert parallel.fsdp_spec((3, 3, 12, 10), 4) == P(None, None, "fsdp", None)
    assert parallel.fsdp_spec((128, 128), 8) == P("fsdp", None)      # ties: the first
    assert parallel.fsdp_spec((3, 5), 4) == P() == parallel.fsdp_spec((), 4) == parallel.fsdp_spec((64,), 1)


@pytest.mark.slow     # ~120 s cold
def test_sharded_and_accumulated_steps_equal_the_replicated_large_batch():
    """Two optimizer steps at batch 32 with the state replicated (fsdp 1) and sharded over 2, 4 and
    8 devices, the last two as k = 2 and 4 accumulated micro-batches of 32/k rows: the parameters,
    EMA (and, without accumulation, the optimizer state) agree; between a step's micro-batches
    the parameters and EMA do not move; each device holds about 1/fsdp of the parameters."""
    split, _ = datasets.load_splits("mnist", image_size=28, holdout_fraction=0.1)
    batches = [step_batch(split, 32, s) for s in range(2)]
    runs = {}
    for fsdp, k in ((1, 1), (2, 1), (4, 2), (8, 4)):
        c = tiny(train__batch_size=32, optim__grad_accum_steps=k, optim__warmup_steps=0)
        micro = [m for b in batches for m in loop.micro_batches(b, k)]
        state, seen = run_steps(c, parallel.make_mesh(fsdp=fsdp), micro)
        assert int(state.step) == 2 * k
        runs[fsdp] = state
        first = seen[k - 1]     # after the first optimizer step (no warm-up: the learning rate is lr)
        assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(first[0]), jax.tree.leaves(initial_params())))
        for held, calls in (((initial_params(), initial_params()), seen[:k - 1]), (first, seen[k:2 * k - 1])):
            for between in calls:
                for x, y in zip(jax.tree.leaves(between), jax.tree.leaves(held)):
                    np.testing.assert_array_equal(x, y)
    replicated = runs[1]
    whole = parallel.bytes_per_device(replicated.params)
    for fsdp, state in runs.items():
        assert_states_close(replicated.params, state.params)
        assert_states_close(replicated.ema_params, state.ema_params)
        # A few small leaves divide by no fsdp and stay whole.
        assert parallel.bytes_per_device(state.params) < 1.2 * whole / fsdp
    assert_states_close(replicated, runs[2])
    assert runs[8].params["conv_in"]["kernel"].sharding.spec == P(None, None, None, "fsdp")


@pytest.mark.slow     # ~190 s cold
def test_checkpoints_move_between_meshes_and_the_loop_accumulates(tmp_path):
    """Written with fsdp 4, resumed with fsdp 1, then with 4 again, the run equals the uninterrupted
    replicated one; so does the loop with two micro-batches per step on a state sharded over 2.
    (Each run checkpoints only at its end: orbax takes seconds per save of the sharded state.)"""
    run = lambda workdir, **fields: loop.train_and_evaluate(tiny(train__checkpoint_every=1000, **fields),
                                                               tmp_path / workdir)
    straight = run("straight")
    for steps, fsdp in ((2, 4), (3, 1), (4, 4)):
        resumed = run("resumed", parallel__fsdp=fsdp, train__num_steps=steps)
    assert_states_close(straight, resumed)
    assert resumed.params["conv_in"]["kernel"].sharding.spec == P(None, None, None, "fsdp")
    accumulated = run("accumulated", parallel__fsdp=2, optim__grad_accum_steps=2)
    assert_states_close(straight.params, accumulated.params)
    assert_states_close(straight.ema_params, accumulated.ema_params)
    # state.step and MultiSteps' own count are in units of k: another k on resume would desynchronise
    # the EMA from the updates, so it is refused (a compatibility field).
    with pytest.raises(ValueError, match="optim.grad_accum_steps: checkpoint 2 vs config 1"):
        run("accumulated", parallel__fsdp=2, train__num_steps=6)


@pytest.mark.slow
def test_memory_benchmark_reports_the_sharded_state():
    whole = parallel.bytes_per_device(jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=parallel.replicated(parallel.make_mesh())), initial_params()))
    row = memory.measure(tiny(), "tiny", 2, per_device_batch=4)
    assert row["params"] == sum(a.size for a in jax.tree.leaves(initial_params()))
    # parameters, EMA and two Adam moments, halved (but for a few small leaves), and a small rest
    assert 2 * whole < row["state"] < 2.2 * whole and row["temp"] > 0
    assert "| tiny (0.0M) | 2 | 8 |" in memory.table([row])


@pytest.mark.parametrize("fields, message", [
    ({"parallel__fsdp": 3}, r"parallel.fsdp=3 does not divide the 8 devices: use one of \[1, 2, 4, 8\]"),
    ({"parallel__fsdp": 0}, "parallel.fsdp=0 must be an integer >= 1"),
    ({"optim__grad_accum_steps": 3}, "train.batch_size=16 does not split into optim.grad_accum_steps=3"),
    ({"optim__grad_accum_steps": 4}, "train.batch_size / optim.grad_accum_steps=4 does not divide over the 8 devices"),
])
def test_bad_mesh_or_accumulation_fails_before_any_work(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        loop.prepare_run(tiny(**fields), tmp_path / "run")
