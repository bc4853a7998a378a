"""PyTorch state-dict files (``torch.save`` of name → tensor) read into NumPy without PyTorch.

Both of ``torch.save``'s layouts are read: the zip archive (PyTorch ≥ 1.6) and the legacy
stream (magic number, header pickles, the state-dict pickle, a list of storage keys, then raw
storages). The file is data, never code, as with ``torch.load(weights_only=True)``:

- every pickle goes through a restricted unpickler. The state dict's admits only
  ``OrderedDict``, typed storages and ``torch._utils._rebuild_tensor_v2`` /
  ``_rebuild_parameter``; the legacy header pickles and key list admit primitives only.
- a file that is neither layout is refused before anything is unpickled.
- offsets, sizes and strides come from the file, so every tensor view is bounds-checked
  against its storage before it is built (``as_strided`` trusts them and would read memory
  that is not the file's), and a storage must fit in the file before it is allocated.
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
# How a legacy stream starts: the magic number pickled with torch.save's pickle_protocol (2 by default).
LEGACY_MAGIC_PICKLES = tuple(pickle.dumps(LEGACY_MAGIC, protocol=p) for p in range(2, pickle.HIGHEST_PROTOCOL + 1))
LEGACY_PROTOCOL = 1001
MAX_EXPANSION = 4   # tensors may take at most this many times the file's bytes (tied weights share storage)
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _malformed(problem: str) -> ValueError:
    return ValueError(f"{problem}: the file is malformed or hostile; refusing to load it")


def _is_count(n) -> bool:
    """A non-negative int64, as torch stores offsets, sizes, strides and numels (bools excluded)."""
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**63


class _Sealed:
    """What the unpickler hands to a pickle: the BUILD opcode, by which a pickle could change
    an object it did not create, is refused."""
    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError("a pickle may not modify a storage or a rebuild function")


class _Storage(_Sealed):
    """A storage's elements, flat and contiguous. Only these back tensor views: a tensor cannot
    pose as one."""
    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


class _Function(_Sealed):
    """An admitted rebuild function as the pickle sees it (the module's own stays unchanged)."""
    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """A read-only strided view into ``storage`` (filled later for legacy files), copied out at the end.

    Checked first: offset, sizes and strides are non-negative ints, one stride per size, and the
    farthest element, offset + Σ (size_i − 1)·stride_i, lies inside the storage (an empty
    tensor needs only offset ≤ storage length)."""
    if not isinstance(storage, _Storage):
        raise _malformed("a tensor record whose storage is not a storage")
    if not (_is_count(offset) and isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
            and len(size) == len(stride) and all(_is_count(n) for n in (*size, *stride))):
        raise _malformed("a tensor record without a non-negative integer offset and one such size and stride "
                         "per dimension")
    array = storage.array
    if any(n * array.itemsize >= 2**63 for n in (offset, *stride)):
        raise _malformed(f"a tensor record whose offset or strides overflow a byte offset ({offset}, {tuple(stride)})")
    if 0 in size:
        if offset > len(array):
            raise _malformed(f"an empty tensor at offset {offset} of a {len(array)}-element storage")
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= len(array):
            raise _malformed(f"a tensor (offset {offset}, size {tuple(size)}, stride {tuple(stride)}) "
                             f"reaching element {last} of a {len(array)}-element storage")
    return np.lib.stride_tricks.as_strided(array[offset:], shape=tuple(size),
                                           strides=tuple(s * array.itemsize for s in stride), writeable=False)


def _rebuild_parameter(data, requires_grad, backward_hooks, *args):
    return data


class _PrimitiveUnpickler(pickle.Unpickler):
    """For the legacy header pickles and key list, which hold only numbers, strings, lists and
    dicts: no class or function is ever looked up and no persistent id is admitted, so nothing
    in them can be called."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name} in a pickle that may hold only numbers and strings")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a persistent id in a pickle that may hold only numbers and strings")


class _StateDictUnpickler(pickle.Unpickler):
    """Admits only what a state dict holds. A ``torch.*Storage`` class stands for its name (a
    string, which the pickle cannot alter); ``load_storage(dtype, key, numel)`` returns the
    array for a storage the first time its key is seen."""
    REBUILD = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
               ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}

    def __init__(self, file, load_storage):
        super().__init__(file)
        self.load_storage = load_storage
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in self.REBUILD:
            return _Function(self.REBUILD[(module, name)])
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a tensor state dict; refusing to load it")

    def persistent_load(self, pid):
        """('storage', storage type, key, location, numel[, view metadata]) → that storage."""
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id (a {type(pid).__name__})")
        _, type_name, key, _, numel, *view = pid
        if not (isinstance(type_name, str) and type_name in STORAGE_DTYPES and isinstance(key, str)
                and _is_count(numel)):
            raise _malformed("a storage record without a storage type, a string key and a non-negative numel")
        if view and view[0] is not None:
            raise ValueError("storage views are not supported; re-save the state dict")
        dtype = np.dtype(STORAGE_DTYPES[type_name])
        if key not in self.storages:
            self.storages[key] = _Storage(self.load_storage(dtype, key, numel))
        array = self.storages[key].array
        if array.dtype != dtype or len(array) != numel:
            raise _malformed(f"storage {key} declared twice with different types or sizes")
        return self.storages[key]


def _read_zip(path: Path) -> dict:
    """data.pkl through the state-dict unpickler; each storage is data/<key>, and must hold
    exactly its declared numel. No member may be larger than the archive (a zip bomb)."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        unpacked = 0

        def read(name):
            nonlocal unpacked
            unpacked += archive.getinfo(name).file_size
            if unpacked > size:   # torch.save stores members uncompressed: more is a zip bomb
                raise _malformed(f"members up to {name} unpack to more bytes than the archive holds")
            return archive.read(name)

        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if not pickles:
            raise ValueError("a zip archive without data.pkl: not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]

        def load_storage(dtype, key, numel):
            array = np.frombuffer(read(f"{prefix}data/{key}"), dtype)
            if len(array) != numel:
                raise _malformed(f"storage {key} holds {len(array)} elements, not the declared {numel}")
            return array

        return _StateDictUnpickler(io.BytesIO(read(pickles[0])), load_storage).load()


def _read_legacy(path: Path) -> dict:
    """Magic bytes, protocol version and system info (primitives), the state dict, the list of
    storage keys (primitives), then per key its numel and raw bytes. The storages the state dict
    declares must together fit in the file before they are allocated, and the key list must
    name each of them once, so none is left unfilled."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(max(map(len, LEGACY_MAGIC_PICKLES)))
        magic = next((m for m in LEGACY_MAGIC_PICKLES if head.startswith(m)), None)
        if magic is None:
            raise ValueError("neither a zip archive nor a legacy torch.save stream; "
                             "refusing to unpickle it (save the state dict with torch.save)")
        f.seek(len(magic))
        protocol = _PrimitiveUnpickler(f).load()
        if not (_is_count(protocol) and protocol == LEGACY_PROTOCOL):
            raise _malformed(f"a legacy stream whose protocol version is not {LEGACY_PROTOCOL}")
        sys_info = _PrimitiveUnpickler(f).load()
        if not isinstance(sys_info, dict):
            raise _malformed("legacy system info that is not a dict")
        if sys_info.get("little_endian", True) is not True:
            raise ValueError("a big-endian legacy stream is not supported; re-save it on a little-endian machine")
        declared = 0

        def load_storage(dtype, key, numel):
            nonlocal declared
            declared += numel * dtype.itemsize
            if declared > size:
                raise _malformed(f"storage {key} of {numel} elements, beyond the file's {size} bytes")
            return np.empty(numel, dtype)

        unpickler = _StateDictUnpickler(f, load_storage)
        state = unpickler.load()
        keys = _PrimitiveUnpickler(f).load()
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)
                and len(set(keys)) == len(keys) and set(keys) == set(unpickler.storages)):
            raise _malformed("a storage key list that does not name each storage the state dict declares once")
        for key in keys:
            target = unpickler.storages[key].array
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != len(target):
                raise _malformed(f"storage {key} stored with {numel} elements, declared with {len(target)}")
            data = np.frombuffer(f.read(numel * target.itemsize), target.dtype)
            if len(data) != numel:
                raise ValueError(f"truncated (storage {key})")
            target[:] = data
        return state


_UNREADABLE = (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, AttributeError, OverflowError,
               struct.error, zipfile.BadZipFile)


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
    """name → NumPy array (a copy) from a ``torch.save``d state dict at ``path``."""
    path = Path(path)
    try:
        state = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    except _UNREADABLE as e:
        raise ValueError(f"{path} is not a readable PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    for value in state.values():
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{path} holds a {type(value).__name__} among its tensors: not a state dict of tensors")
    # Views are checked against their storages, but a stride-0 view, or many views of one storage,
    # could still ask the copy below for far more memory than the file holds.
    copied, limit = sum(v.nbytes for v in state.values()), MAX_EXPANSION * path.stat().st_size
    if copied > limit:
        raise ValueError(f"{path}: its tensors would take {copied} bytes, more than {MAX_EXPANSION}× the file's "
                         "size (views that repeat their storage's elements); the file is malformed or hostile")
    return {k: np.array(v) for k, v in state.items()}
