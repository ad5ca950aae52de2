"""A restricted unpickler for torch checkpoints: nothing the file names is imported or called.

``find_class`` answers every global. A short allow-list maps to pure reconstructors written here
(tensor and parameter rebuilders yield :class:`TensorRef`s, storages yield :class:`StorageRef`s,
``OrderedDict``, builtin containers, torch dtypes and sizes, numpy arrays and scalars rebuilt from
their raw bytes); every other name becomes an inert :class:`StandIn` class. Each global and how
the pickle used it is recorded, which is what ``anemoi-ckpt scan`` reports.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..anemoi_meta import ARRAY_DTYPES
from .standins import StandIn, StorageRef, TensorRef, standin_class

# Storage classes named in persistent ids -> torch dtype attribute names.
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "UInt16Storage": "uint16", "UInt32Storage": "uint32", "UInt64Storage": "uint64",
    "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2Storage": "float8_e5m2",
    "Float8_e4m3fnuzStorage": "float8_e4m3fnuz", "Float8_e5m2fnuzStorage": "float8_e5m2fnuz",
}
TORCH_DTYPES = frozenset(set(STORAGE_DTYPES.values()) | {"float8_e8m0fnu"})

#: Modules whose callables are dangerous in a pickle: listed by ``scan`` as such. A global is
#: dangerous when any component of its module path is listed here ("os", "torch.multiprocessing")
#: or any dotted prefix of it is ("torch.hub.load", "numpy.testing._private.utils"). The list
#: covers fickling 0.1.12's ``UNSAFE_IMPORTS`` and ``UnsafeImportsML.UNSAFE_MODULES`` (kept in
#: step by tests/test_malicious.py; fickling itself is never imported by this package).
DANGEROUS_MODULES = frozenset({
    # process execution, system access
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "pty", "commands", "multiprocessing",
    "platform", "signal", "_signal", "threading", "_thread", "atexit", "_osx_support", "_aix_support",
    # code execution, compilation, imports
    "builtins", "__builtin__", "__builtins__", "code", "codeop", "runpy", "marshal", "types", "compile",
    "exec", "eval", "doctest", "importlib", "_frozen_importlib", "_frozen_importlib_external", "_imp",
    "pkgutil", "zipimport", "gc", "site", "unittest", "test", "inspect", "compileall", "py_compile",
    "idlelib", "lib2to3", "pydoc", "pexpect", "venv", "ensurepip", "pip", "distutils",
    # attribute-access and call gadgets
    "operator", "_operator", "functools",
    # debuggers and profilers (they run code)
    "pdb", "bdb", "timeit", "trace", "cProfile", "profile",
    # network
    "socket", "ssl", "http", "httplib", "urllib", "urllib2", "requests", "aiohttp", "asyncio",
    "webbrowser", "smtplib", "imaplib", "ftplib", "poplib", "telnetlib", "nntplib", "socketserver",
    "xmlrpc", "select", "selectors",
    # native code
    "ctypes", "_ctypes",
    # nested pickles
    "pickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
    # files and the file system
    "shutil", "tempfile", "pathlib", "filecmp", "fileinput", "glob", "linecache", "difflib", "mmap",
    "tarfile", "zipfile", "sqlite3", "_sqlite3", "io", "_io", "logging", "syslog", "uuid",
    # ML-specific: code loaders, compilers, JITs
    "torch.hub", "torch.utils.cpp_extension", "torch.jit", "torch.ops", "torch._dynamo",
    "torch._inductor", "torch.compile", "torch.package", "numpy.testing", "numpy.f2py",
    "numpy.distutils", "numpy.ctypeslib",
})
#: Single callables that are dangerous although their module is not: loaders that unpickle
#: (nested pickles), code runners, config loaders (fickling's ``UnsafeImportsML.UNSAFE_IMPORTS``).
DANGEROUS_NAMES = frozenset({
    "torch.load", "torch.compile", "torch.serialization.load", "torch.serialization._load",
    "torch.storage._load_from_bytes", "torch.utils._config_module.ConfigModule",
    "torch.distributed.elastic.rendezvous.api.basichandlers",
    "numpy.load", "numpy.lib.npyio.load", "numpy.lib._npyio_impl.load", "numpy.lib.format.read_array",
    "numpy.testing._private.utils.runstring",
})
#: Builtins that cannot run code or touch the system (pure functions, data types, constants); any
#: other builtin (eval, exec, getattr, __import__, type, open, ...) is dangerous.
SAFE_BUILTINS = frozenset({
    "bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "set",
    "frozenset", "dict", "len", "abs", "sum", "min", "max", "round", "pow", "divmod", "sorted",
    "reversed", "enumerate", "zip", "range", "map", "filter", "slice", "iter", "next", "all", "any",
    "hash", "id", "repr", "ascii", "bin", "hex", "oct", "ord", "chr", "isinstance", "issubclass",
    "object", "callable", "format", "Ellipsis", "NotImplemented",
})
_BUILTIN_MODULES = frozenset({"builtins", "__builtin__", "__builtins__"})


@dataclass
class GlobalUse:
    module: str
    name: str
    allowed: bool  # mapped to one of our reconstructors (never runs file code)
    dangerous: bool  # a known code-execution primitive
    calls: int = 0  # times the pickle asked to call or instantiate it

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def would_execute(self) -> bool:
        """torch.load(weights_only=False) would have run code for this global."""
        return not self.allowed and (self.calls > 0 or self.dangerous)


def _is_dangerous(module: str, name: str) -> bool:
    """A known code-execution primitive (a reporting classification: nothing is ever called).

    Protocol 4 names are attribute paths (``torch`` + ``os.system`` reaches ``os.system``), so
    the name's components count as well as the module's: a listed module, a builtin module, or a
    dunder (``object.__subclasses__``, ``f.__globals__``) anywhere on the path is dangerous."""
    parts = name.split(".")
    if len(parts) > 1 and any(p in DANGEROUS_MODULES or (p.startswith("__") and p.endswith("__"))
                              for p in parts):
        return True
    if module in _BUILTIN_MODULES:
        return parts[0] not in SAFE_BUILTINS
    path = module.split(".") + parts
    if any(".".join(path[:i]) in DANGEROUS_NAMES for i in range(2, len(path) + 1)):
        return True
    mod_parts = module.split(".")
    if any(p in DANGEROUS_MODULES for p in mod_parts) or any(
            ".".join(mod_parts[:i]) in DANGEROUS_MODULES for i in range(2, len(mod_parts) + 1)):
        return True
    if len(parts) > 1:  # torch + hub.load: the attribute path walks into torch.hub
        return _is_dangerous(f"{module}.{parts[0]}", ".".join(parts[1:]))
    return False


# --- allow-listed reconstructors: pure functions over the pickle's own data ---------------------

def _rebuild_tensor_v2(storage: Any, offset: int, size: Any, stride: Any, requires_grad: bool = False,
                       backward_hooks: Any = None, metadata: Any = None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    return TensorRef(storage, int(offset), tuple(int(d) for d in size), tuple(int(s) for s in stride),
                     bool(requires_grad))


def _rebuild_parameter(data: Any, requires_grad: bool = True, backward_hooks: Any = None,
                       state: Any = None) -> Any:
    if isinstance(data, TensorRef):
        data.is_parameter, data.requires_grad = True, bool(requires_grad)
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    return collections.OrderedDict(*args)


def _reconstructor(cls: Any, base: Any, state: Any = None) -> StandIn:
    """``copyreg._reconstructor`` (protocol 0/1 objects): an empty stand-in of ``cls``."""
    if isinstance(cls, type) and issubclass(cls, StandIn):
        return cls.__new__(cls)
    return StandIn.__new__(standin_class("copyreg._reconstructor"), cls, base, state)


class _NumpyArray(StandIn):
    """``numpy.core.multiarray._reconstruct`` target: becomes a real array only from raw bytes of
    an allow-listed dtype, in :func:`resolve_numpy`."""

    __slots__ = ()
    dotted = "numpy.ndarray"


class _NumpyDtype(StandIn):
    __slots__ = ()
    dotted = "numpy.dtype"


def _np_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> _NumpyArray:
    return _NumpyArray()


def _np_scalar(dtype: Any, raw: Any = b"") -> Any:
    dt = _safe_dtype(dtype)
    if dt is None or not isinstance(raw, bytes) or len(raw) != dt.itemsize:
        return StandIn.__new__(standin_class("numpy.core.multiarray.scalar"), dtype, raw)
    return np.frombuffer(raw, dtype=dt)[0]


def _safe_dtype(obj: Any) -> np.dtype | None:
    if isinstance(obj, _NumpyDtype) and obj.args and isinstance(obj.args[0], str):
        dt = ARRAY_DTYPES.get(str(np.dtype(obj.args[0]))) if obj.args[0] in _DTYPE_CODES else None
        if dt is not None and isinstance(obj.state, tuple) and len(obj.state) > 1 and obj.state[1] == ">":
            dt = dt.newbyteorder(">")
        return dt
    return None


_DTYPE_CODES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
                          "c8", "c16", "?"})


def resolve_numpy(obj: Any) -> Any:
    """Turn a recorded ndarray into a real numpy array when its dtype is allow-listed."""
    if isinstance(obj, _NumpyArray) and isinstance(obj.state, tuple) and len(obj.state) == 5:
        _, shape, dtype, fortran, raw = obj.state
        dt = _safe_dtype(dtype)
        if dt is not None and isinstance(raw, (bytes, bytearray)) and all(isinstance(d, int) for d in shape):
            n = dt.itemsize * int(np.prod(shape, dtype=np.int64)) if shape else dt.itemsize
            if n == len(raw):
                arr = np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order="F" if fortran else "C")
                return arr.astype(dt.newbyteorder("="), copy=False)
    return obj


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Protocol 2 pickles bytes as ``_codecs.encode(str, "latin1")``: only that form is honoured."""
    if isinstance(text, str) and encoding in ("latin1", "latin-1"):
        return text.encode("latin1")
    raise pickle.UnpicklingError(f"_codecs.encode with encoding {str(encoding)[:20]!r} refused")


ALLOWED: dict[tuple[str, str], Callable[..., Any] | Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): lambda storage, offset, size, stride: _rebuild_tensor_v2(storage, offset, size, stride),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "tuple"): tuple,
    ("builtins", "list"): list, ("builtins", "dict"): dict, ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray, ("builtins", "slice"): slice,
    ("torch", "Size"): tuple,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): _NumpyArray,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class _DtypeName(str):
    """A torch dtype named by the pickle, kept as its name (``torch.float32`` -> "float32")."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles torch's ``data.pkl`` into plain data, TensorRefs and StandIns. Never executes."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.globals: dict[str, GlobalUse] = {}
        self._classes: dict[str, type[StandIn]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol < 3 pickles say __builtin__.set): the stdlib's own rename
        # tables, applied as data; nothing is imported.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = f"{module}.{name}"
        if key not in self.globals:
            allowed = (module, name) in ALLOWED or (module == "torch" and (
                name in STORAGE_DTYPES or name in TORCH_DTYPES))
            self.globals[key] = GlobalUse(module, name, allowed, _is_dangerous(module, name))
        use = self.globals[key]
        if (module, name) in ALLOWED:
            return _counting(ALLOWED[(module, name)], use)
        if module == "torch" and name in STORAGE_DTYPES:
            return _DtypeName(STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPES:
            return _DtypeName(name)
        if key not in self._classes:
            self._classes[key] = standin_class(key, on_call=_mark(use))
        return self._classes[key]

    def persistent_load(self, pid: Any) -> Any:
        if (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _DtypeName) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            return StorageRef(key=pid[2], dtype_name=str(pid[1]), numel=pid[4], location=str(pid[3]))
        raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")


def _counting(target: Any, use: GlobalUse) -> Any:
    """An allow-listed reconstructor that also counts its calls (for ``scan``)."""
    if isinstance(target, type):
        return target  # _NumpyArray / _NumpyDtype: inert classes

    def call(*args: Any, **kwargs: Any) -> Any:
        use.calls += 1
        return target(*args, **kwargs)
    return call


def _mark(use: GlobalUse) -> Callable[[], None]:
    def called() -> None:
        use.calls += 1
    return called


def restricted_loads(data: bytes) -> tuple[Any, dict[str, GlobalUse]]:
    """Unpickle ``data`` safely; returns (object tree, globals referenced)."""
    up = RestrictedUnpickler(data)
    obj = up.load()
    return obj, up.globals
