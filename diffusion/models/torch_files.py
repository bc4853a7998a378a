"""PyTorch state-dict files (``torch.save`` of name → tensor) read into NumPy without PyTorch.

Both of ``torch.save``'s layouts are read: the zip archive (PyTorch ≥ 1.6) and the legacy
stream (magic number, pickle, then raw storages). The unpickler admits only what a state dict
holds — ``OrderedDict``, typed storages and ``torch._utils._rebuild_tensor_v2`` /
``_rebuild_parameter`` — so a file cannot run code, as with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """A strided view into ``storage`` (filled later for legacy files); copied out at the end."""
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride), writeable=False)


def _rebuild_parameter(data, requires_grad, backward_hooks, *args):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
               ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}

    def __init__(self, file, load_storage):
        super().__init__(file)
        self.load_storage = load_storage

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a tensor state dict; refusing to load it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return self.load_storage(*pid[1:])


def _read_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if not pickles:
            raise ValueError(f"{path} is a zip archive without data.pkl: not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]

        def load_storage(storage_type, key, location, numel):
            return np.frombuffer(archive.read(f"{prefix}data/{key}"), storage_type.dtype)

        return _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()


def _read_legacy(path: Path) -> dict:
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise ValueError(f"{path} is neither a zip archive nor a legacy torch.save stream")
        pickle.load(f)   # protocol version
        pickle.load(f)   # system info
        storages = {}

        def load_storage(storage_type, key, location, numel, view_metadata=None):
            if view_metadata is not None:
                raise ValueError(f"{path}: storage views are not supported; re-save the state dict")
            if key not in storages:
                storages[key] = np.empty(numel, storage_type.dtype)
            return storages[key]

        state = _StateDictUnpickler(f, load_storage).load()
        for key in pickle.load(f):
            (numel,) = struct.unpack("<q", f.read(8))
            target = storages[key]
            data = np.frombuffer(f.read(numel * target.itemsize), target.dtype)
            if len(data) != numel:
                raise ValueError(f"{path} is truncated (storage {key})")
            target[:] = data
        return state


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
    """name → NumPy array (a copy) from a ``torch.save``d state dict at ``path``."""
    path = Path(path)
    try:
        state = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except (pickle.UnpicklingError, EOFError, KeyError, struct.error) as e:
        raise ValueError(f"{path} is not a readable PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return {k: np.array(v) for k, v in state.items()}
