"""Tensors of a torch zip archive (torch.save since 1.6, or a TorchScript file) without torch.

Both are zip files: <root>/data.pkl is a pickle whose tensors are calls to
torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...), and each storage
is a persistent id ("storage", torch.<Type>Storage, key, location, numel) naming the raw
little-endian bytes in <root>/data/<key>. A TorchScript module pickles its submodules as
`__torch__.<module> <Class>` objects whose state is a dict of attributes. A restricted
Unpickler maps exactly those globals to NumPy and plain Python, and refuses every other
one, so reading an archive never runs code from it.

    tensors = torch_archive.read_tensors("default_1.pt")  # {"net.layers.conv.weight": array}

Deliberately not here: the legacy (pre-zip) torch.save format, which still needs torch,
and mapping names onto a model (that lives beside the model, e.g. metrics/inception_weights.py).
"""

import collections
import io
import pickle
import zipfile
from typing import Any

import numpy as np

# torch.<Type>Storage -> the NumPy dtype of its bytes (bfloat16 has none and is refused).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class ArchiveError(ValueError):
    """An archive that cannot be read; the message is one line naming the file."""


class ScriptObject:
    """A pickled TorchScript object (`__torch__.<module>.<Class>`): its class name and state."""

    def __init__(self, class_name: str):
        self.class_name = class_name
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"state": state}


def _script_class(class_name: str) -> type:
    # NEWOBJ calls cls.__new__(cls) and BUILD calls __setstate__: one class per pickled name.
    def new(cls, *args):
        del args
        obj = object.__new__(cls)
        ScriptObject.__init__(obj, class_name)
        return obj

    return type(class_name, (ScriptObject,), {"__new__": new})


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2 in NumPy: a strided view of the storage, copied."""
    del unused
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    del requires_grad, backward_hooks, unused
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, root: str, origin: str):
        super().__init__(file)
        self.archive, self.root, self.origin = archive, root, origin
        self.storages: dict[str, np.ndarray] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist"):
            return list
        if module == "torch" and name in STORAGE_DTYPES:
            return name  # the persistent id's storage type; resolved in persistent_load
        if module == "__torch__" or module.startswith("__torch__."):
            key = f"{module}.{name}"
            if key not in self.classes:
                self.classes[key] = _script_class(key)
            return self.classes[key]
        raise ArchiveError(f"{self.origin}: refuses to load the pickled global {module}.{name}")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ArchiveError(f"{self.origin}: unknown persistent id {pid!r}")
        _, storage_type, key, _, numel = pid
        if storage_type not in STORAGE_DTYPES:
            raise ArchiveError(f"{self.origin}: unsupported storage type {storage_type!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.root}/data/{key}")
            dtype = np.dtype(STORAGE_DTYPES[storage_type]).newbyteorder("<")
            self.storages[key] = np.frombuffer(raw, dtype, count=numel)
        return self.storages[key]


def read_pickle(path: str) -> Any:
    """The object of a torch zip archive's data.pkl, tensors as NumPy arrays."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise ArchiveError(f"{path}: not a torch zip archive ({error})") from None
    with archive:
        roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl")]
        roots = [root for root in roots if "/" not in root]
        if len(roots) != 1:
            raise ArchiveError(f"{path}: no <root>/data.pkl in the archive (not a torch file)")
        root = roots[0]
        byteorder = f"{root}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ArchiveError(f"{path}: big-endian tensors are not supported")
        data = io.BytesIO(archive.read(f"{root}/data.pkl"))
        try:
            return _Unpickler(data, archive, root, path).load()
        except (pickle.UnpicklingError, KeyError, EOFError, TypeError) as error:
            raise ArchiveError(f"{path}: unreadable pickle ({error})") from None


def named_tensors(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """{dotted name: array} of every tensor in nested dicts and TorchScript objects."""
    if isinstance(obj, np.ndarray):
        return {prefix: obj}
    if isinstance(obj, ScriptObject):
        obj = obj.state
    if not isinstance(obj, dict):
        return {}
    found = {}
    for key, value in obj.items():
        found.update(named_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return found


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """{name: array} of a torch.save'd state dict or a TorchScript module's parameters."""
    return named_tensors(read_pickle(path))
