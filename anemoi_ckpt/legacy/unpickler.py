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
import pickletools
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
    ref = TensorRef(storage, int(offset), tuple(int(d) for d in size), tuple(int(s) for s in stride),
                    bool(requires_grad))
    if metadata:  # torch sets it only when non-default: {"neg": True} / {"conj": True} (value flags)
        ref.extra["metadata"] = metadata  # interpreted (honoured or refused) in TorchZipCheckpoint.tensor
    return ref


def _rebuild_parameter(data: Any, requires_grad: bool = True, backward_hooks: Any = None,
                       state: Any = None) -> Any:
    if isinstance(data, TensorRef):
        data.is_parameter, data.requires_grad = True, bool(requires_grad)
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    if len(args) > 1 or (args and not isinstance(args[0], _CONTAINERS)):
        raise pickle.UnpicklingError("OrderedDict() of something other than a container refused")
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


#: Bounds on what a pickle may make the allow-listed callables build (docs/conversion.md, security).
#: Objects nested deeper than this are refused before the pickle is loaded: hashing a nested tuple
#: (a set element, a dict key) and freeing nested slices recurse in C, with no recursion check.
MAX_PICKLE_DEPTH = 1000
#: The allow-listed callables may copy or allocate at most this many elements (or bytes) per byte
#: of data.pkl, plus ``EXPANSION_SLACK``: a pickle that calls ``list(x)`` on one memo-referenced
#: ``x`` a million times is refused instead of filling memory.
EXPANSION_FACTOR = 2
EXPANSION_SLACK = 1 << 20
_CONTAINERS = (list, tuple, dict, set, frozenset, collections.OrderedDict)
_SCALARS = (type(None), bool, int, float)


def _size(obj: Any) -> int:
    return len(obj) if isinstance(obj, (str, bytes, bytearray, *_CONTAINERS)) else 0


def _container_ctor(kind: type) -> Callable[..., Any]:
    """``kind()`` or ``kind(container)``: protocol <= 3 pickles rebuild sets as ``set([...])``.
    Any other argument (a string, bytes, a count) would make the copy larger than the pickle."""
    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], _CONTAINERS)):
            what = type(args[1] if len(args) > 1 else args[0]).__name__
            raise pickle.UnpicklingError(f"{kind.__name__}() of a {what} refused (only containers "
                                         "are rebuilt)")
        return kind(*args)
    return build


def _bytearray(*args: Any) -> bytearray:
    """``bytearray(bytes)`` (protocol 3+) or ``bytearray(str, "latin-1")`` (protocol <= 2) only:
    ``bytearray(n)`` would allocate n bytes from a few bytes of pickle."""
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0], "latin-1")
    raise pickle.UnpicklingError(f"bytearray() of {', '.join(type(a).__name__ for a in args)[:60]} "
                                 "refused (only bytes or a latin-1 string)")


def _slice(*args: Any) -> slice:
    """A slice of numbers only: nested slices recurse in C when freed."""
    if len(args) > 3 or not all(isinstance(a, _SCALARS) for a in args):
        raise pickle.UnpicklingError("slice() of something other than numbers or None refused")
    return slice(*args)


def _complex(*args: Any) -> complex:
    if len(args) > 2 or not all(isinstance(a, (int, float, complex)) or
                                (isinstance(a, str) and len(a) <= 100) for a in args):
        raise pickle.UnpicklingError("complex() of something other than numbers refused")
    return complex(*args)


ALLOWED: dict[tuple[str, str], Callable[..., Any] | Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): lambda storage, offset, size, stride: _rebuild_tensor_v2(storage, offset, size, stride),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): _container_ctor(set), ("builtins", "frozenset"): _container_ctor(frozenset),
    ("builtins", "tuple"): _container_ctor(tuple), ("builtins", "list"): _container_ctor(list),
    ("builtins", "dict"): _container_ctor(dict), ("builtins", "complex"): _complex,
    ("builtins", "bytearray"): _bytearray, ("builtins", "slice"): _slice,
    ("torch", "Size"): _container_ctor(tuple),
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
        #: elements or bytes the allow-listed callables may still copy or allocate
        self.budget = EXPANSION_FACTOR * len(data) + EXPANSION_SLACK

    def charge(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Count what an allow-listed call copies (its arguments' sizes) against the budget."""
        self.budget -= 1 + sum(_size(a) for a in args) + sum(_size(v) for v in kwargs.values())
        if self.budget < 0:
            raise pickle.UnpicklingError(
                f"the pickle makes its allowed callables copy more than {EXPANSION_FACTOR} elements "
                "per byte of data.pkl (memo references expanded again and again)")

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
            return _counting(ALLOWED[(module, name)], use, self)
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
        raise pickle.UnpicklingError(f"unsupported persistent id {_short(pid)}")


def _counting(target: Any, use: GlobalUse, up: RestrictedUnpickler) -> Any:
    """An allow-listed reconstructor that also counts its calls (for ``scan``) and charges what it
    copies to the unpickler's budget."""
    if isinstance(target, type):
        return target  # _NumpyArray / _NumpyDtype: inert classes

    def call(*args: Any, **kwargs: Any) -> Any:
        use.calls += 1
        up.charge(args, kwargs)
        return target(*args, **kwargs)
    return call


def _mark(use: GlobalUse) -> Callable[[], None]:
    def called() -> None:
        use.calls += 1
    return called


def _short(obj: Any) -> str:
    """A bounded description of a value from the pickle (``str`` of a nested one is unbounded)."""
    if isinstance(obj, (str, bytes, int, float, type(None))):
        return repr(obj)[:80]
    if isinstance(obj, tuple):
        return "(" + ", ".join(_short(x) if isinstance(x, (str, int, type(None))) else type(x).__name__
                               for x in obj[:5]) + (", ...)" if len(obj) > 5 else ")")
    return f"a {type(obj).__name__}"


class _Node:
    """What the structure check knows of one value: how deeply it nests, and for a tuple its
    items (a call copies their depth as it is when the call happens)."""

    __slots__ = ("depth", "items", "mutable")

    def __init__(self, depth: int, items: list[_Node] | None = None, mutable: bool = False) -> None:
        self.depth, self.items, self.mutable = depth, items, mutable


_ATOM = _Node(0)
_BUILDS = {"TUPLE": False, "LIST": True, "DICT": True, "FROZENSET": False}  # mark-based: mutable?
_EMPTY = {"EMPTY_TUPLE": False, "EMPTY_LIST": True, "EMPTY_DICT": True, "EMPTY_SET": True}
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})


def check_structure(data: bytes, max_depth: int = MAX_PICKLE_DEPTH) -> None:
    """Walk ``data``'s opcodes without building anything and refuse, before the real unpickler
    runs, a pickle whose objects nest deeper than ``max_depth`` or whose memo indices are out of
    all proportion with its size (the C unpickler sizes its memo table by the largest index).

    Depth is counted through every container, argument tuple and object state; a tuple's depth is
    fixed when it is built, and a call's result nests as deep as its arguments are at the call."""
    stack: list[_Node] = []
    marks: list[int] = []
    memo: dict[int, _Node] = {}

    def pop() -> _Node:
        if not stack or (marks and len(stack) <= marks[-1]):
            raise pickle.UnpicklingError("pickle stack underflow")
        return stack.pop()

    def pop_mark() -> list[_Node]:
        if not marks:
            raise pickle.UnpicklingError("pickle has no MARK where one is needed")
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    def deepest(items: list[_Node]) -> int:
        return max((n.depth for n in items), default=0)

    def made(node: _Node, pos: int) -> _Node:
        if node.depth > max_depth:
            raise pickle.UnpicklingError(f"objects nested deeper than {max_depth} levels "
                                         f"(at byte {pos} of data.pkl)")
        return node

    def grow(target: _Node, items: list[_Node], pos: int) -> None:
        if target.mutable:
            target.depth = max(target.depth, 1 + deepest(items))
            made(target, pos)

    def call_result(args: _Node, pos: int) -> _Node:
        inner = deepest(args.items) if args.items is not None else args.depth
        return made(_Node(1 + inner, mutable=True), pos)

    for op, arg, pos in pickletools.genops(data):
        name = op.name
        if name == "MARK":
            marks.append(len(stack))
        elif name == "STOP":
            break
        elif name in ("PROTO", "FRAME", "READONLY_BUFFER", "READWRITE_BUFFER"):
            continue
        elif name == "POP":
            if stack and not (marks and len(stack) <= marks[-1]):
                stack.pop()
            elif marks:
                marks.pop()
            else:
                raise pickle.UnpicklingError("pickle stack underflow")
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1] if stack else pop())
        elif name in _PUTS or name == "MEMOIZE":
            idx = len(memo) if name == "MEMOIZE" else arg
            if not isinstance(idx, int) or idx < 0 or idx > len(data):
                raise pickle.UnpicklingError(f"memo index {_short(idx)} out of range for a pickle of "
                                             f"{len(data)} bytes")
            if not stack:
                raise pickle.UnpicklingError("pickle stack underflow")
            memo[idx] = stack[-1]
        elif name in _GETS:
            if arg not in memo:
                raise pickle.UnpicklingError(f"memo index {_short(arg)} was never stored")
            stack.append(memo[arg])
        elif name in _BUILDS:
            items = pop_mark()
            stack.append(made(_Node(1 + deepest(items), None if _BUILDS[name] else items,
                                    _BUILDS[name]), pos))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            items = [pop() for _ in range(int(name[-1]))][::-1]
            stack.append(made(_Node(1 + deepest(items), items), pos))
        elif name in _EMPTY:
            stack.append(_Node(1, [] if name == "EMPTY_TUPLE" else None, _EMPTY[name]))
        elif name == "APPEND":
            item = pop()
            grow(stack[-1] if stack else pop(), [item], pos)
        elif name in ("APPENDS", "ADDITEMS", "SETITEMS"):
            items = pop_mark()
            grow(stack[-1] if stack else pop(), items, pos)
        elif name == "SETITEM":
            value, key = pop(), pop()
            grow(stack[-1] if stack else pop(), [key, value], pos)
        elif name == "BUILD":
            state = pop()
            grow(stack[-1] if stack else pop(), [state], pos)
        elif name in ("REDUCE", "NEWOBJ"):
            args = pop()
            pop()
            stack.append(call_result(args, pos))
        elif name == "NEWOBJ_EX":
            kwargs, args = pop(), pop()
            pop()
            stack.append(made(_Node(1 + max(deepest(args.items or [args]), kwargs.depth),
                                    mutable=True), pos))
        elif name in ("OBJ", "INST"):
            items = pop_mark()
            stack.append(made(_Node(1 + deepest(items), mutable=True), pos))
        else:  # constants, globals, persistent ids, extensions: by pickletools' own stack effect
            before = op.stack_before
            if pickletools.markobject in before:
                pop_mark()
            else:
                for _ in before:
                    pop()
            stack.extend(_ATOM for _ in op.stack_after)


def restricted_loads(data: bytes) -> tuple[Any, dict[str, GlobalUse]]:
    """Unpickle ``data`` safely; returns (object tree, globals referenced). The structure is
    checked first (:func:`check_structure`), so nothing the real unpickler builds can crash it."""
    check_structure(data)
    up = RestrictedUnpickler(data)
    obj = up.load()
    return obj, up.globals
