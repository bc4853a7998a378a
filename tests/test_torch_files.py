"""PyTorch state-dict files read without PyTorch: well-formed files round-trip, hostile ones are refused.

Every file is written here with the standard library: a small pickler emits ``torch.*`` globals by
name, storages as persistent ids and tensors as ``_rebuild_tensor_v2`` calls, as ``torch.save`` does.
A hostile pickle calls ``Path.touch`` on a marker file, which must never appear.
"""
import collections
import io
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diffusion.models import torch_files
from diffusion.models.torch_files import LEGACY_MAGIC, read_torch_state_dict

FORMATS = {"FloatStorage": ("f", np.float32), "LongStorage": ("q", np.int64)}
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


class Ref:
    """A global such as ``torch.FloatStorage``, pickled by name (torch need not be importable)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):
        raise AssertionError("a stand-in is never called")


class Storage:
    """A typed storage: pickled as a persistent id declaring ``numel`` elements (default: all)."""

    def __init__(self, key, values, kind="FloatStorage", numel=None):
        self.key, self.values, self.kind = key, list(values), kind
        self.numel = len(self.values) if numel is None else numel

    def raw(self) -> bytes:
        return struct.pack(f"<{len(self.values)}{FORMATS[self.kind][0]}", *self.values)


class Tensor:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` in the pickle."""

    def __init__(self, storage, offset, size, stride):
        self.args = self.children = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return Ref("torch._utils", "_rebuild_tensor_v2"), self.args


class Parameter:
    def __init__(self, data):
        self.data, self.children = data, [data]

    def __reduce__(self):
        return Ref("torch._utils", "_rebuild_parameter"), (self.data, True, collections.OrderedDict())


class Build:
    """``obj`` with the BUILD opcode applying ``state`` to it."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state
        self.children = [obj, state]


class Touch:
    """A hostile object: unpickling it creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


class TorchPickler(pickle._Pickler):   # the Python pickler: its dispatch table takes the stand-ins
    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[Ref] = lambda self, ref: self.write(pickle.GLOBAL + f"{ref.module}\n{ref.name}\n".encode())
    dispatch[Build] = lambda self, b: (self.save(b.obj), self.save(b.state), self.write(pickle.BUILD))

    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        pid = ("storage", Ref("torch", obj.kind), obj.key, "cpu", obj.numel)
        return pid + (None,) if self.legacy else pid   # legacy ids end with the view metadata


def storages_of(x, found=None) -> list[Storage]:
    """The storages ``x`` refers to, each once, in order of first use."""
    found = {} if found is None else found
    if isinstance(x, Storage):
        found.setdefault(x.key, x)
    for child in (x.values() if isinstance(x, dict) else x if isinstance(x, (tuple, list)) else
                  getattr(x, "children", ())):
        storages_of(child, found)
    return list(found.values())


def legacy_file(path, state, magic=LEGACY_MAGIC, protocol=1001, sys_info=SYS_INFO, keys=None):
    """The legacy stream: magic, protocol, sys info, the state dict, the key list, then per key its
    numel (8 bytes, little-endian) and raw elements."""
    storages = storages_of(state)
    with open(path, "wb") as f:
        for header in (magic, protocol, sys_info):
            pickle.dump(header, f, protocol=2)
        TorchPickler(f, legacy=True).dump(state)
        pickle.dump([s.key for s in storages] if keys is None else keys, f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", len(s.values)) + s.raw())
    return path


def zip_file(path, state):
    """The zip layout: archive/data.pkl and archive/data/<key>."""
    buffer = io.BytesIO()
    TorchPickler(buffer, legacy=False).dump(state)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for s in storages_of(state):
            archive.writestr(f"archive/data/{s.key}", s.raw())
    return path


WRITERS = {"legacy": legacy_file, "zip": zip_file}


@pytest.mark.parametrize("layout", WRITERS)
def test_well_formed_files_read_with_their_views(tmp_path, layout):
    six, seven = Storage("0", range(6)), Storage("1", [7], "LongStorage")
    state = collections.OrderedDict(
        w=Tensor(six, 0, (2, 3), (3, 1)), wt=Tensor(six, 0, (3, 2), (1, 3)), tail=Tensor(six, 2, (4,), (1,)),
        p=Parameter(Tensor(six, 1, (2, 2), (1, 2))), n=Tensor(seven, 0, (), ()), empty=Tensor(six, 6, (0, 3), (3, 1)))
    got = read_torch_state_dict(WRITERS[layout](tmp_path / "ok.bin", state))
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = {"w": w, "wt": w.T, "tail": w.ravel()[2:], "p": np.array([[1, 3], [2, 4]], np.float32),
                "n": np.array(7, np.int64), "empty": np.zeros((0, 3), np.float32)}
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and got[name].flags.writeable
        np.testing.assert_array_equal(got[name], want, err_msg=name)


@pytest.mark.parametrize("where", ["magic", "protocol", "sys_info", "keys"])
def test_a_hostile_legacy_header_pickle_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    one = Storage("0", [1.0])
    fields = {"magic": LEGACY_MAGIC, "protocol": 1001, "sys_info": SYS_INFO, "keys": ["0"]}
    fields[where] = Touch(marker) if where != "sys_info" else {**SYS_INFO, "x": Touch(marker)}
    path = legacy_file(tmp_path / "hostile.bin", {"w": Tensor(one, 0, (1,), (1,))}, **fields)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_torch_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", ["random", "hostile_pickle"])
def test_a_file_of_neither_layout_is_refused_before_unpickling(tmp_path, content):
    marker = tmp_path / "pwned"
    path = tmp_path / "other.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4096) if content == "random" else
                     pickle.dumps({"w": Touch(marker)}, protocol=2))
    with pytest.raises(ValueError, match="neither a zip archive nor a legacy torch.save stream"):
        read_torch_state_dict(path)
    assert not marker.exists()


ONE_FLOAT = Storage("0", [1.0])
HOSTILE_RECORDS = {   # (offset, size, stride) over a one-float storage
    "1000_element_view": (0, (1000,), (1,)),
    "4e9_element_view": (0, (4_000_000_000,), (1,)),
    "negative_stride": (0, (2,), (-1,)),
    "negative_size": (0, (-1,), (1,)),
    "huge_stride_of_a_size_1_dimension": (0, (1, 1), (2**62, 1)),    # in bounds, but as_strided overflows
    "offset_past_the_end": (5, (1,), (1,)),
    "empty_tensor_past_the_end": (2, (0,), (1,)),
    "more_strides_than_sizes": (0, (1,), (1, 1)),
    "bool_stride": (0, (1,), (True,)),
}


@pytest.mark.parametrize("layout", WRITERS)
@pytest.mark.parametrize("record", HOSTILE_RECORDS)
def test_a_tensor_record_outside_its_storage_is_refused(tmp_path, layout, record):
    path = WRITERS[layout](tmp_path / "view.bin", {"w": Tensor(ONE_FLOAT, *HOSTILE_RECORDS[record])})
    with pytest.raises(ValueError, match="tensor.*malformed or hostile"):
        read_torch_state_dict(path)


@pytest.mark.parametrize("layout", WRITERS)
def test_a_tensor_cannot_pose_as_a_storage(tmp_path, layout):
    """A stride-0 view of 1,000 elements is in bounds, but as a storage it would span 1,000 floats."""
    wide = Tensor(ONE_FLOAT, 0, (1000,), (0,))
    path = WRITERS[layout](tmp_path / "pose.bin", {"w": Tensor(wide, 0, (1000,), (1,))})
    with pytest.raises(ValueError, match="storage is not a storage.*malformed or hostile"):
        read_torch_state_dict(path)


@pytest.mark.parametrize("layout", WRITERS)
@pytest.mark.parametrize("target", ["storage", "rebuild_function"])
def test_a_pickle_cannot_modify_a_storage_or_a_rebuild_function(tmp_path, layout, target):
    """BUILD with slot state is setattr: it could swap a storage's array for a wide view, or
    change the reader's own functions for every later load."""
    wide = Tensor(ONE_FLOAT, 0, (1000,), (0,))
    state = ({"wide": wide, "w": Tensor(Build(ONE_FLOAT, (None, {"array": wide})), 0, (1000,), (1,))}
             if target == "storage" else
             {"w": Tensor(ONE_FLOAT, 0, (1,), (1,)),
              "f": Build(Ref("torch._utils", "_rebuild_tensor_v2"), (None, {"__defaults__": (0, (1,), (1,))}))})
    path = WRITERS[layout](tmp_path / "build.bin", state)
    with pytest.raises(ValueError, match="may not modify a storage or a rebuild function"):
        read_torch_state_dict(path)
    assert torch_files._rebuild_tensor_v2.__defaults__ == (False, None, None)


@pytest.mark.parametrize("layout", WRITERS)
def test_views_that_would_copy_out_far_more_than_the_file_are_refused(tmp_path, layout):
    """In bounds, but 10¹⁰ copies of one float (a stride-0 view) would take 40 GB to copy out."""
    path = WRITERS[layout](tmp_path / "expand.bin", {"w": Tensor(ONE_FLOAT, 0, (10**10,), (0,))})
    with pytest.raises(ValueError, match="40000000000 bytes, more than 4× the file's size"):
        read_torch_state_dict(path)
    shared = {f"w{i}": Tensor(ONE_FLOAT, 0, (1,), (1,)) for i in range(3)}    # tied weights: fine
    assert set(read_torch_state_dict(WRITERS[layout](tmp_path / "tied.bin", shared))) == set(shared)


def test_a_value_that_is_not_a_tensor_is_refused(tmp_path):
    path = zip_file(tmp_path / "storage.bin", {"w": ONE_FLOAT})
    with pytest.raises(ValueError, match="holds a _Storage among its tensors"):
        read_torch_state_dict(path)


def test_a_legacy_storage_larger_than_the_file_is_refused_before_allocation(tmp_path):
    huge = Storage("0", [1.0], numel=2**40)   # 4 TiB declared, 4 bytes stored
    path = legacy_file(tmp_path / "huge.bin", {"w": Tensor(huge, 0, (1,), (1,))})
    with pytest.raises(ValueError, match="storage 0 of 1099511627776 elements, beyond the file.*malformed or hostile"):
        read_torch_state_dict(path)


@pytest.mark.parametrize("keys", [[], ["0", "1"], ["0", "0"]], ids=["missing", "undeclared", "repeated"])
def test_the_legacy_key_list_must_name_each_declared_storage_once(tmp_path, keys):
    """A declared storage left out would be returned as uninitialised memory."""
    path = legacy_file(tmp_path / "keys.bin", {"w": Tensor(ONE_FLOAT, 0, (1,), (1,))}, keys=keys)
    with pytest.raises(ValueError, match="storage key list.*malformed or hostile"):
        read_torch_state_dict(path)


def test_a_zip_storage_must_hold_its_declared_numel(tmp_path):
    short = Storage("0", [1.0, 2.0], numel=1)
    path = zip_file(tmp_path / "short.bin", {"w": Tensor(short, 0, (1,), (1,))})
    with pytest.raises(ValueError, match="storage 0 holds 2 elements, not the declared 1.*malformed or hostile"):
        read_torch_state_dict(path)


def test_torch_save_round_trips_in_both_layouts(tmp_path):
    torch = pytest.importorskip("torch")
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    state = {"w": w, "wt": w.t(), "n": torch.tensor(7)}
    for legacy in (False, True):
        path = tmp_path / f"legacy{legacy}.bin"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        got = read_torch_state_dict(path)
        for name, t in state.items():
            np.testing.assert_array_equal(got[name], t.numpy(), err_msg=f"{name} (legacy={legacy})")


def test_zip_members_may_not_unpack_to_more_than_the_archive_in_all(tmp_path):
    """Each member within the archive's size is not enough: together they are bounded too (a
    deflated zip of many well-compressing members once loaded ~220× its size)."""
    zeros = [Storage(str(i), [0.0] * 20_000) for i in range(8)]
    state = {f"w{i}": Tensor(s, 0, (20_000,), (1,)) for i, s in enumerate(zeros)}
    buffer = io.BytesIO()
    TorchPickler(buffer, legacy=False).dump(state)
    path = tmp_path / "bomb.bin"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for z in zeros:
            archive.writestr(f"archive/data/{z.key}", z.raw())
    assert path.stat().st_size < 80_000 * 4 / 8     # each member alone fits, all together do not
    with pytest.raises(ValueError, match="unpack to more bytes than the archive holds"):
        read_torch_state_dict(path)


def test_a_legacy_stream_saved_with_a_newer_pickle_protocol_reads(tmp_path):
    """torch.save(..., pickle_protocol=4) pickles the magic number with that protocol too."""
    path = tmp_path / "p4.bin"
    legacy_file(path, {"w": Tensor(Storage("0", [1.0, 2.0]), 0, (2,), (1,))})
    data = path.read_bytes()
    p2, p4 = pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(LEGACY_MAGIC, protocol=4)
    path.write_bytes(p4 + data[len(p2):])
    np.testing.assert_array_equal(read_torch_state_dict(path)["w"], [1.0, 2.0])
