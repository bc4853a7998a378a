"""Checkpoint reliability on tiny states: no non-finite saves, checksums verified on restore,
falling back from a corrupt checkpoint only when asked, and a full disk that says so."""
import asyncio
import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from orbax.checkpoint._src.path import async_path

from diffusion import checkpoint_checks, checkpoint_failures, checkpoint_meta
from diffusion.checkpoint_failures import DiskFullError
from diffusion.checkpoints import Checkpointer, CorruptCheckpointError, NonFiniteStateError

CONFIG = {"model": {"base_channels": 8}, "diffusion": {"schedule": "linear"}}

# After a failed write orbax abandons TensorStore futures whose callbacks later find their event
# loop closed ("Exception ignored ... RuntimeError: Event loop is closed"): upstream noise, not under test.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def mesh():
    return Mesh(np.array(jax.devices()), ("d",))


def tiny_state(seed=0, *, sharded=True):
    """A TrainState-shaped dict; ``params/w`` (4096 floats, sharded over the 8 devices) is big
    enough that orbax stores it out of line in a data file."""
    k = jax.random.split(jax.random.key(seed), 3)
    state = {"step": jnp.int32(seed),
             "params": {"conv_in": {"kernel": jax.random.normal(k[0], (3, 3, 1, 8)), "bias": jnp.zeros(8)},
                        "w": jax.random.normal(k[1], (4096,))},
             "ema_params": {"conv_in": {"kernel": jax.random.normal(k[2], (3, 3, 1, 8)), "bias": jnp.ones(8)}},
             "rng": jax.random.key_data(k[0])}
    replicated = NamedSharding(mesh(), P())
    state = jax.device_put(state, replicated)
    if sharded:
        state["params"]["w"] = jax.device_put(state["params"]["w"], NamedSharding(mesh(), P("d")))
    return state


def host(state):
    return [np.asarray(a) for a in jax.tree.leaves(state)]


def assert_identical(a, b):
    for x, y in zip(host(a), host(b), strict=True):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype


def data_files(directory, step):
    """The tensorstore/OCDBT data files of checkpoint ``step``'s state."""
    return [p for p in (directory / str(step) / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def damage(directory, step):
    """Overwrite four bytes in the middle of every data file of checkpoint ``step``'s state (which
    file holds which array, and where, varies run to run; the files are zstd frames and OCDBT
    nodes): orbax then either fails to decode them or restores garbage without complaint."""
    for f in data_files(directory, step):
        data = bytearray(f.read_bytes())
        data[len(data) // 2:len(data) // 2 + 4] = b"\x00\x00\xff\x7f"
        f.write_bytes(bytes(data))


def rewrite_state(directory, step, state):
    """Replace checkpoint ``step``'s state item by a valid orbax checkpoint of ``state``, leaving its
    meta (and the checksums in it) as they were: data orbax reads back without complaint."""
    shutil.rmtree(directory / str(step) / "state")
    with ocp.StandardCheckpointer() as writer:
        writer.save(directory / str(step) / "state", state)


def saved(directory, steps, keep=3, keep_period=0):
    """A checkpointer that has saved ``steps``, the last one written (saves are asynchronous)."""
    ckpt = Checkpointer(directory, keep=keep, keep_period=keep_period)
    for step in steps:
        ckpt.save(step, tiny_state(step), config=CONFIG, data_position=step)
    ckpt.wait()
    return ckpt


# --- 1. never save a non-finite state ---

def test_non_finite_state_is_not_saved(tmp_path):
    ckpt = saved(tmp_path, [1])
    state = tiny_state(2)
    state["params"]["conv_in"]["kernel"] = state["params"]["conv_in"]["kernel"].at[0, 0, 0, 0].set(jnp.nan)
    state["ema_params"]["conv_in"]["bias"] = state["ema_params"]["conv_in"]["bias"].at[3].set(jnp.inf)
    with pytest.raises(NonFiniteStateError, match=r"values in ema_params/conv_in/bias, params/conv_in/kernel; "
                                                  r"nothing was written.*last checkpoint \(step 1\) is kept"):
        ckpt.save(2, state, config=CONFIG, data_position=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"] and ckpt.latest_step() == 1
    assert issubclass(NonFiniteStateError, FloatingPointError)


def test_non_finite_leaves_are_found_in_sharded_arrays():
    state = tiny_state()
    state["params"]["w"] = state["params"]["w"].at[4095].set(-jnp.inf)   # on the last device only
    assert checkpoint_checks.nonfinite_leaves(state) == ["params/w"]
    assert checkpoint_checks.nonfinite_leaves(tiny_state()) == []


# --- 2. per-leaf checksums, verified on restore ---

def test_checksums_are_saved_and_do_not_depend_on_sharding(tmp_path, x64):
    state = tiny_state()
    state["extra"] = {"bf16": jnp.linspace(-1, 1, 8, dtype=jnp.bfloat16), "f16": jnp.ones(3, jnp.float16),
                      "f64": jnp.arange(5, dtype=jnp.float64) / 3, "i64": jnp.arange(4, dtype=jnp.int64) - 2,
                      "i8": jnp.arange(-3, 3, dtype=jnp.int8), "mask": jnp.array([True, False, True])}
    ckpt = Checkpointer(tmp_path)
    ckpt.save(5, state, config=CONFIG, data_position=5)
    sums = ckpt.read_meta(5)["checksums"]
    assert list(sums) == list(checkpoint_checks.named_leaves(state))
    assert "params/conv_in/kernel" in sums and "extra/mask" in sums
    assert all(len(v) == 2 and all(isinstance(x, int) and 0 <= x < 2 ** 32 for x in v) for v in sums.values())
    assert checkpoint_checks.checksums(jax.device_get(state)) == sums       # one device, same sums
    template = jax.device_get(state)                                  # restore unsharded: still verifies
    restored, meta = ckpt.restore(template, config=CONFIG)
    assert_identical(restored, state)
    assert meta["data_position"] == 5


def test_cpu_saves_copy_each_replicated_array_whole(tmp_path):
    """On the CPU backend a Checkpointer makes orbax's array handler copy a replicated array from its
    first replica, not in a jitted slice per replica (``save_replicated_arrays_whole_on_cpu``); the
    round trips of the (mostly replicated) ``tiny_state`` in the tests around this one still hold."""
    Checkpointer(tmp_path)
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    assert jax.default_backend() == "cpu" and handler._use_replica_parallel is False
    assert handler._array_metadata_store is not None       # as orbax's default handler has


def test_checksums_see_a_changed_or_moved_word():
    w = jnp.arange(8, dtype=jnp.float32)
    base = checkpoint_checks.checksums(w)["<root>"]
    assert checkpoint_checks.checksums(w.at[3].set(3.0000002))["<root>"] != base
    swapped = checkpoint_checks.checksums(w[jnp.array([1, 0, 2, 3, 4, 5, 6, 7])])["<root>"]
    assert swapped[0] == base[0] and swapped[1] != base[1]


def test_damaged_data_files_are_refused(tmp_path):
    ckpt = saved(tmp_path, [1, 2])
    damage(tmp_path, 2)
    with pytest.raises(CorruptCheckpointError) as e:
        Checkpointer(tmp_path).restore(tiny_state(), config=CONFIG)
    message = str(e.value)
    assert f"checkpoint {tmp_path / '2'} is corrupt" in message
    assert "do not match the checksums" in message or "its data is unreadable" in message
    assert f"--fall_back_to_good_checkpoint to move it to {tmp_path.parent / 'corrupt_checkpoints'}/" in message
    assert "resume from step 1" in message
    restored, _ = ckpt.restore(tiny_state(), config=CONFIG, step=1)   # the earlier one is untouched
    assert_identical(restored, tiny_state(1))


def test_values_other_than_those_saved_are_refused_by_their_checksums(tmp_path):
    saved(tmp_path, [1, 2])
    changed = tiny_state(2)
    changed["params"]["w"] = changed["params"]["w"].at[7].add(1.0)      # one word of one leaf
    rewrite_state(tmp_path, 2, changed)
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {tmp_path / '2'} is corrupt: params/w do not "
                                                     "match the checksums saved with it.*resume from step 1"):
        Checkpointer(tmp_path).restore(tiny_state(), config=CONFIG)


@pytest.mark.parametrize("part", ["data", "meta"])
def test_unreadable_checkpoint_is_corrupt(tmp_path, part):
    ckpt = saved(tmp_path, [1])
    if part == "data":
        for f in data_files(tmp_path, 1):
            f.write_bytes(b"")
    else:
        (tmp_path / "1" / "meta" / "metadata").write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match=f"{tmp_path / '1'} is corrupt: its {part} is unreadable.*"
                                                     "no earlier checkpoint"):
        ckpt.restore(tiny_state(), config=CONFIG)


def test_checkpoint_without_checksums_restores_with_one_warning(tmp_path, capsys):
    state = tiny_state(1)
    manager = ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(create=True))
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave({"config": CONFIG, "data_position": 1})))
    manager.wait_until_finished()
    manager.close()
    restored, meta = Checkpointer(tmp_path).restore(tiny_state(), config=CONFIG)
    assert_identical(restored, state)
    assert meta["data_position"] == 1
    out = capsys.readouterr().out.splitlines()
    assert [l for l in out if "could not be verified" in l] == [
        f"warning: checkpoint {tmp_path / '1'} was written without checksums and could not be verified"]


def test_other_state_layout_is_a_mismatch_not_corruption(tmp_path):
    ckpt = saved(tmp_path, [1])
    template = tiny_state()
    template["opt_state"] = {"mu": jnp.zeros(3)}
    del template["rng"]
    with pytest.raises(ValueError, match="differently laid-out state.*absent from the checkpoint: "
                                         "opt_state/mu; not in this run's state: rng") as e:
        ckpt.restore(template, config=CONFIG)
    assert not isinstance(e.value, CorruptCheckpointError)


def test_config_mismatch_is_still_a_value_error(tmp_path):
    ckpt = saved(tmp_path, [1])
    other = {"model": {"base_channels": 16}, "diffusion": {"schedule": "linear"}}
    with pytest.raises(ValueError, match="different model or schedule:\n  model.base_channels: checkpoint 8"):
        ckpt.restore(tiny_state(), config=other)


def test_a_save_returns_before_its_files_are_written_and_a_restore_waits_for_them(tmp_path, monkeypatch):
    """Orbax's last writes (metadata, commit marker) are slowed to 0.5 s each: ``save`` returns while
    the checkpoint is still orbax's temporary directory, and the restore right after it returns the
    saved state."""
    real = async_path.write_text

    async def slow(path, text):
        await asyncio.sleep(0.5)
        return await real(path, text)

    monkeypatch.setattr(async_path, "write_text", slow)
    ckpt = saved(tmp_path, [1])
    ckpt.save(2, tiny_state(2), config=CONFIG, data_position=2)
    assert not (tmp_path / "2").exists()
    restored, meta = ckpt.restore(tiny_state(), config=CONFIG)
    assert_identical(restored, tiny_state(2))
    assert meta["data_position"] == 2 and ckpt.latest_step() == 2
    ckpt.close()


# --- 3. fall back only when asked ---

def test_fall_back_only_when_asked(tmp_path, capsys):
    ckpt = saved(tmp_path / "checkpoints", [1, 2, 3])
    damage(tmp_path / "checkpoints", 3)
    for f in data_files(tmp_path / "checkpoints", 2):
        f.write_bytes(b"")
    corrupt = tmp_path / "corrupt_checkpoints"
    (corrupt / "3").mkdir(parents=True)                   # an earlier fallback already used the name

    with pytest.raises(CorruptCheckpointError, match="checkpoints/3 is corrupt.*resume from step 2"):
        ckpt.restore_latest_good(tiny_state(), config=CONFIG, fall_back=False)
    assert sorted(ckpt.manager.all_steps()) == [1, 2, 3] and not (corrupt / "3.1").exists()

    state, meta = ckpt.restore_latest_good(tiny_state(), config=CONFIG, fall_back=True)
    assert meta["data_position"] == 1
    assert_identical(state, tiny_state(1))
    assert sorted(p.name for p in corrupt.iterdir()) == ["2", "3", "3.1"] and data_files(corrupt, "3.1")
    assert sorted(ckpt.manager.all_steps()) == [1]
    lines = [l for l in capsys.readouterr().out.splitlines() if "moved to" in l]
    assert lines == [f"checkpoint {tmp_path / 'checkpoints' / '3'} is corrupt: moved to {corrupt / '3.1'}; "
                     "trying the checkpoint before it",
                     f"checkpoint {tmp_path / 'checkpoints' / '2'} is corrupt: moved to {corrupt / '2'}; "
                     "trying the checkpoint before it"]

    ckpt.save(2, tiny_state(22), config=CONFIG, data_position=2)    # the moved step's number is free again
    ckpt.wait()
    state, meta = Checkpointer(tmp_path / "checkpoints").restore_latest_good(tiny_state(), config=CONFIG,
                                                                              fall_back=False)
    assert meta["data_position"] == 2
    assert_identical(state, tiny_state(22))


def test_fall_back_raises_when_no_checkpoint_verifies(tmp_path):
    ckpt = saved(tmp_path / "checkpoints", [1])
    damage(tmp_path / "checkpoints", 1)
    with pytest.raises(CorruptCheckpointError, match="no checkpoint in .* verifies; the corrupt ones are in"):
        ckpt.restore_latest_good(tiny_state(), config=CONFIG, fall_back=True)
    assert (tmp_path / "corrupt_checkpoints" / "1").is_dir() and ckpt.latest_step() is None


# --- 4. a full disk says so, and the previous checkpoint stays intact ---

TENSORSTORE_ENOSPC = ValueError(   # how TensorStore reported a real full tmpfs (errno only in the text)
    'RESOURCE_EXHAUSTED: Error writing "a/0" in OCDBT database at local file "/x/2.orbax-checkpoint-tmp/'
    'state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed to write 563620 bytes to file 5: '
    "No space left on device [os_error_code='28']")


def chained(outer, inner):
    try:
        try:
            raise inner
        except Exception:
            raise outer
    except Exception as e:
        return e


@pytest.mark.parametrize("exc, full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (TENSORSTORE_ENOSPC, True),
    (chained(RuntimeError("Event loop is closed"), OSError(errno.ENOSPC, "x")), True),
    (ExceptionGroup("save", [KeyError("a"), OSError(errno.ENOSPC, "x")]), True),
    (chained(RuntimeError("Event loop is closed"), OSError(errno.EACCES, "Permission denied")), False),
    (ValueError("DATA_LOSS: CRC-32C checksum verification failed"), False),
])
def test_disk_full_is_recognised_anywhere_in_the_chain(exc, full):
    assert checkpoint_failures.is_disk_full(exc) is full


def assert_disk_full_handled(directory, ckpt, error):
    message = str(error)
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert f"disk full: checkpoint step 2 could not be saved in {directory} (" in message
    assert " bytes free; " in message
    assert "the previous checkpoint (step 1) is intact and a rerun after freeing space resumes from it" in message
    assert sorted(p.name for p in directory.iterdir()) == ["1"] and ckpt.latest_step() == 1
    restored, meta = ckpt.restore(tiny_state(), config=CONFIG)
    assert_identical(restored, tiny_state(1))
    assert meta["data_position"] == 1
    restored, _ = Checkpointer(directory).restore(tiny_state(), config=CONFIG)   # as a rerun sees it
    assert_identical(restored, tiny_state(1))
    absl = logging.getLogger("absl")       # only orbax's abandoned-write records are dropped after it
    assert absl.isEnabledFor(logging.WARNING)
    assert absl.filter(logging.makeLogRecord({"msg": "an unrelated warning", "levelno": logging.WARNING}))


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), TENSORSTORE_ENOSPC],
                         ids=["oserror", "tensorstore"])
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    ckpt = saved(tmp_path, [1], keep=1)              # keep=1: orbax would have pruned step 1 for step 2

    async def no_space(path, text):
        raise error

    with monkeypatch.context() as m:
        m.setattr(async_path, "write_text", no_space)   # orbax's metadata and commit-marker writes
        ckpt.save(2, tiny_state(2), config=CONFIG, data_position=2)   # returns: the write fails in the background
        with pytest.raises(DiskFullError) as e:
            ckpt.wait()
    assert_disk_full_handled(tmp_path, ckpt, e.value)
    ckpt.save(3, tiny_state(3), config=CONFIG, data_position=3)   # space freed: saving works again
    ckpt.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3"]


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root only; skipped where mounting is not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_full_disk_for_real(small_disk):
    directory = small_disk / "checkpoints"
    ckpt = saved(directory, [1], keep=1)
    too_big = tiny_state(2)
    too_big["params"]["w"] = jax.random.normal(jax.random.key(9), (200_000,))   # 800 KB, incompressible
    ckpt.save(2, too_big, config=CONFIG, data_position=2)     # returns: the write fails in the background
    with pytest.raises(DiskFullError) as e:
        ckpt.latest_step()                                      # the next wait raises it
    assert_disk_full_handled(directory, ckpt, e.value)
    ckpt.close()


def test_train_on_a_full_disk_ends_with_one_message(small_disk):
    """The entry point's whole output on a full disk: the progress bar, then one line (once ~4,500
    lines of orbax's abandoned-write tracebacks)."""
    repo = Path(__file__).resolve().parents[1]
    tiny = ["--config.train.batch_size=16", "--config.train.num_steps=2", "--config.train.checkpoint_every=2",
            "--config.sample.num=16", "--config.sample.steps=2"]     # the MLP's ~4 MB state overflows the 256 KiB disk
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config", "configs/swissroll.py",
                           "--workdir", str(small_disk / "run"), *tiny], cwd=repo, capture_output=True, text=True,
                          env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(repo / ".jax_cache")))
    lines = [l for l in proc.stderr.replace("\r", "\n").splitlines() if l.strip() and not l.startswith("train:")]
    assert proc.returncode == 1
    assert len(lines) == 1 and lines[0].startswith("error: disk full: checkpoint step 2 could not be saved in "), lines[:5]
    assert "there is no earlier checkpoint" in lines[0]


def test_a_field_added_after_a_checkpoint_is_not_a_difference():
    """A run saved before diffusion.zero_terminal_snr existed resumes; a changed or removed field does not."""
    saved = {"model": {"base_channels": 8}, "diffusion": {"schedule": "linear"}}
    now = {"model": {"base_channels": 8}, "diffusion": {"schedule": "linear", "zero_terminal_snr": False}}
    assert checkpoint_meta.config_differences(saved, now) == []
    assert checkpoint_meta.config_differences(saved, {"model": {"base_channels": 8}, "diffusion": {}}) == [
        "diffusion.schedule: checkpoint 'linear' vs config '<absent>'"]


def test_milestones_at_the_keep_period_survive_pruning(tmp_path):
    """keep=2, keep_period=3 over steps 1…7: the newest two (6, 7) and the milestone 3 remain; a
    negative period is refused by the config check."""
    from configs import mnist
    from experiments import build
    ckpt = saved(tmp_path, range(1, 8), keep=2, keep_period=3)
    assert sorted(ckpt.manager.all_steps()) == [3, 6, 7]
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == [3, 6, 7]
    config = mnist.get_config()
    config.train.keep_period = -1
    with pytest.raises(ValueError, match="train.keep_period=-1 must be an integer >= 0"):
        build.validate(config)
