"""Reads PyTorch ``.pth``/``.pt`` checkpoints into numpy arrays without importing torch.

Two on-disk formats are understood:

* the zip format written by ``torch.save`` since PyTorch 1.6: a zip archive whose
  single top folder holds ``data.pkl`` (the pickled object, tensors referring to
  storages by persistent id), ``data/<key>`` (the raw bytes of each storage) and
  optionally ``byteorder``;
* the legacy stream format of earlier releases: a few header pickles, the object
  pickle, the list of storage keys, then each storage as an int64 element count
  followed by its raw bytes.

Unpickling is restricted: only the handful of globals a checkpoint needs
(tensor and parameter rebuild functions, storage classes, ``OrderedDict`` and
numpy scalar reconstruction) resolve; any other global is refused with an error
naming it, so no code from the file runs. Tensors become C-contiguous numpy
arrays (a view's storage offset, size and stride are honoured); ``bfloat16``
tensors use the ``ml_dtypes.bfloat16`` numpy type.

    state = load_pth("official.pth")      # whatever object was saved
    weights = state_dict_from(state)      # the flat {name: array} mapping
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from typing import Any

import numpy as np

__all__ = ["TorchPickleError", "load_pth", "state_dict_from"]


class TorchPickleError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and the reason."""


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError as e:  # pragma: no cover - ml_dtypes ships with jax
        raise TorchPickleError("bfloat16 tensors need the ml_dtypes package") from e
    return np.dtype(ml_dtypes.bfloat16)


# Storage class name -> numpy dtype (a callable for the lazily imported bfloat16).
_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,
}

# torch dtype name -> numpy dtype, for ``torch.<dtype>`` globals (``_rebuild_tensor_v3``).
_TORCH_DTYPES: dict[str, Any] = {
    "float64": np.float64, "double": np.float64,
    "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16,
    "bfloat16": _bfloat16,
    "int64": np.int64, "long": np.int64,
    "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
    "complex64": np.complex64, "complex128": np.complex128,
}


def _np_dtype(spec) -> np.dtype:
    return np.dtype(spec() if callable(spec) and not isinstance(spec, type) else spec)


class _StorageType:
    """Stands for a ``torch.<X>Storage`` class in the unpickled stream."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _np_dtype(_STORAGE_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


class _TorchDtype:
    """Stands for a ``torch.<dtype>`` object."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _np_dtype(_TORCH_DTYPES[name])


class _Storage:
    """A storage known by key; its bytes are attached once read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None  # 1-D array of ``dtype``

    def view(self, offset: int, size: int) -> _StorageView:
        return _StorageView(self, offset, size)


class _StorageView:
    """A legacy-format view into a storage (offset and size in elements)."""

    def __init__(self, base: _Storage, offset: int, size: int):
        self.base, self.offset, self.numel = base, offset, size
        self.dtype = base.dtype


class _Tensor:
    """A tensor whose storage may not be read yet; ``materialize`` gives the array."""

    def __init__(self, storage, offset, size, stride, dtype=None):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        self.dtype = dtype  # overrides an untyped storage's dtype (v3 rebuild)

    def materialize(self, source: str) -> np.ndarray:
        storage, offset = self.storage, self.offset
        if isinstance(storage, _StorageView):
            offset += storage.offset
            storage = storage.base
        if storage.data is None:
            raise TorchPickleError(f"{source}: storage {storage.key!r} has no data in the file")
        flat = storage.data
        if self.dtype is not None and flat.dtype != self.dtype:
            flat = flat.view(np.uint8).view(self.dtype)
        if not self.size:
            if offset >= flat.size:
                raise TorchPickleError(f"{source}: storage {storage.key!r} too short for a scalar")
            return np.array(flat[offset])
        extent = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype)
        if offset + extent > flat.size or min(self.stride) < 0:
            raise TorchPickleError(
                f"{source}: tensor of size {self.size} stride {self.stride} at offset {offset} "
                f"does not fit storage {storage.key!r} of {flat.size} elements")
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=self.size, strides=tuple(s * item for s in self.stride),
            writeable=False)
        return np.array(view, copy=True, order="C")


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, *_ignored):
    del requires_grad, backward_hooks
    return _Tensor(storage, storage_offset, size, stride,
                   dtype.dtype if isinstance(dtype, _TorchDtype) else None)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    del new_type, state
    return func(*args)


class _Marker:
    """Stands for a class that is only used as a tag (``torch.Tensor``, ``Parameter``)."""

    def __init__(self, name):
        self.name = name


def _torch_device(*args):
    return ":".join(str(a) for a in args)


_TORCH_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "device"): _torch_device,
    ("torch", "Size"): tuple,
    ("torch", "Tensor"): _Marker("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.Parameter"),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}

_NUMPY_NAMES = {
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
}


class _Unpickler(pickle.Unpickler):
    """Restricted unpickler: resolves only checkpoint globals, storages by persistent id."""

    def __init__(self, file, source: str, storages: dict[str, _Storage], legacy: bool):
        super().__init__(file)
        self.source, self.storages, self.legacy = source, storages, legacy

    def find_class(self, module, name):
        if (module, name) in _TORCH_FUNCTIONS:
            return _TORCH_FUNCTIONS[(module, name)]
        if module in ("torch", "torch.storage", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchDtype(name)
        if module == "torch.storage" and name == "TypedStorage":
            return _StorageType("UntypedStorage")
        if (module, name) in _NUMPY_NAMES:
            mod = __import__(module, fromlist=[name])
            return getattr(mod, name)
        raise pickle.UnpicklingError(
            f"{self.source}: refusing to load global {module}.{name} (not a tensor, storage "
            "or container type a checkpoint needs)")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"{self.source}: unsupported persistent id {pid!r}")
        if self.legacy:
            # ('storage', storage_type, root_key, location, numel, view_metadata)
            _, stype, key, _location, numel, view = pid
        else:
            # ('storage', storage_type, key, location, numel)
            _, stype, key, _location, numel = pid[:5]
            view = None
        if not isinstance(stype, (_StorageType, _TorchDtype)):
            raise pickle.UnpicklingError(f"{self.source}: unknown storage type {stype!r}")
        key = str(key)
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, stype.dtype, int(numel))
        if view is not None:
            _view_key, offset, size = view
            return storage.view(int(offset), int(size))
        return storage


def _materialize(obj, source: str):
    if isinstance(obj, _Tensor):
        return obj.materialize(source)
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v, source)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v, source) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v, source) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v, source) for v in obj)
    return obj


def _from_bytes(raw: bytes, dtype: np.dtype, byteorder: str) -> np.ndarray:
    """A 1-D array of native ``dtype`` from bytes stored in ``byteorder``."""
    data = np.frombuffer(raw, dtype=dtype)
    if byteorder != sys.byteorder and dtype.itemsize > 1:
        if dtype.kind == "c":  # swap the real and imaginary parts separately
            part = np.dtype(f"f{dtype.itemsize // 2}")
            return data.view(part).byteswap().view(dtype)
        data = data.byteswap()
    return data


def _read_zip(path_or_file, source: str):
    with zipfile.ZipFile(path_or_file) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise TorchPickleError(f"{source}: expected one '<folder>/data.pkl' in the archive, "
                                   f"found {len(pkls)}")
        root = pkls[0][: -len("data.pkl")]
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = zf.read(root + "byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise TorchPickleError(f"{source}: unknown byteorder {byteorder!r}")
        storages: dict[str, _Storage] = {}
        try:
            obj = _Unpickler(io.BytesIO(zf.read(pkls[0])), source, storages, legacy=False).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
            if isinstance(e, TorchPickleError):
                raise
            raise TorchPickleError(f"{source}: cannot unpickle data.pkl: {e}") from None
        for key, storage in storages.items():
            blob = root + "data/" + key
            if blob not in names:
                raise TorchPickleError(f"{source}: storage blob {blob!r} is missing")
            raw = zf.read(blob)
            if len(raw) % storage.dtype.itemsize:
                raise TorchPickleError(f"{source}: blob {blob!r} has {len(raw)} bytes, not a "
                                       f"multiple of {storage.dtype.itemsize} ({storage.dtype})")
            storage.data = _from_bytes(raw, storage.dtype, byteorder)
    return _materialize(obj, source)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _read_legacy(f, source: str):
    storages: dict[str, _Storage] = {}

    def load():  # every pickle of the stream goes through the restricted unpickler
        return _Unpickler(f, source, storages, legacy=True).load()

    try:
        magic = load()
    except Exception:  # any garbage: not this format
        magic = None
    if magic != _LEGACY_MAGIC:
        raise TorchPickleError(f"{source}: not a PyTorch checkpoint (neither a zip archive nor "
                               "the legacy stream format)")
    try:
        load()  # protocol version
        sys_info = load()
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        obj = load()
        keys = load()
    except TorchPickleError:
        raise
    except Exception as e:
        raise TorchPickleError(f"{source}: cannot unpickle legacy checkpoint: {e}") from None
    order = "<" if little else ">"
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise TorchPickleError(f"{source}: storage key {key!r} was never referenced")
        head = f.read(8)
        if len(head) != 8:
            raise TorchPickleError(f"{source}: file ends before storage {key!r}")
        (numel,) = struct.unpack(order + "q", head)
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TorchPickleError(f"{source}: file ends inside storage {key!r}")
        storage.data = _from_bytes(raw, storage.dtype, "little" if little else "big")
    return _materialize(obj, source)


def load_pth(path: str | os.PathLike) -> Any:
    """Reads a ``torch.save`` file; tensors become numpy arrays, containers stay as saved.

    Raises ``TorchPickleError`` (a ValueError) naming the file when it is not a
    readable checkpoint or uses a global outside the allowed set.
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise TorchPickleError(f"{source}: no such file")
    if zipfile.is_zipfile(source):
        try:
            return _read_zip(source, source)
        except zipfile.BadZipFile as e:
            raise TorchPickleError(f"{source}: damaged zip archive: {e}") from None
    with open(source, "rb") as f:
        return _read_legacy(f, source)


_NESTING_KEYS = ("model", "state_dict", "model_state_dict", "net", "params")


def state_dict_from(obj: Any, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """The flat ``{key: array}`` weights of a loaded checkpoint.

    Accepts a state dict itself or a dict nesting it under ``model``, ``state_dict``,
    ``model_state_dict``, ``net`` or ``params`` (detector releases use ``model``).
    Non-array entries of the state dict are dropped (arrays are numpy arrays, or
    tensors of another library when given an object loaded by it).
    """
    if not isinstance(obj, dict):
        raise TorchPickleError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    arrays = {k: v for k, v in obj.items() if hasattr(v, "shape") and hasattr(v, "dtype")}
    if not arrays:
        for key in _NESTING_KEYS:
            if isinstance(obj.get(key), dict):
                return state_dict_from(obj[key], f"{source}[{key!r}]")
        raise TorchPickleError(f"{source}: no tensors found (top-level keys: "
                               f"{sorted(map(str, obj))[:10]})")
    return dict(arrays)
