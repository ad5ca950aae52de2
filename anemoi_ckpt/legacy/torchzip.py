"""torch's zip checkpoint layout (``torch.save`` since 1.6, Lightning ``.ckpt``, anemoi ``.ckpt``).

``<root>/data.pkl`` is the pickle, ``<root>/data/<key>`` the raw storages (STORED). The pickle is
read with :class:`RestrictedUnpickler`; storages are memory-mapped and turned into tensors only
when asked for, so a conversion streams tensor by tensor.
"""

from __future__ import annotations

import mmap
import os
import pickle
import sys
import zipfile
from typing import Any

from ..errors import FormatError
from ..container.zipread import read_directory
from .standins import StorageRef, TensorRef
from .unpickler import GlobalUse, restricted_loads

#: The pickle is read whole; torch files keep it small (the tensors live in storages).
MAX_PICKLE = 1 << 30
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's pre-1.6 (non-zip) serialization magic number


class TorchZipCheckpoint:
    """An open torch zip checkpoint: the restricted object tree plus lazy storages."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._fh = _open_regular(self.path)
        try:
            self._load()
        except BaseException:
            self._fh.close()
            raise

    def _load(self) -> None:
        size = os.fstat(self._fh.fileno()).st_size
        head = self._fh.read(64)
        if size == 0:
            raise FormatError(self.path, "empty file")
        if not zipfile.is_zipfile(self._fh):
            if _is_legacy_torch(head):
                raise FormatError(self.path, "legacy (pre-1.6, non-zip) torch serialization is unsupported",
                                  "re-save it with torch >= 1.6, in an environment you trust with this file")
            raise FormatError(self.path, "not a torch zip checkpoint")
        root, members = read_directory(self.path, self._fh, size, require="data.pkl")
        self.root, self._members = root, members
        pkl = members["data.pkl"]
        if pkl.size > MAX_PICKLE:
            raise FormatError(self.path, f"data.pkl is {pkl.size} bytes, over the 1 GiB limit")
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_COPY)
        self.byteorder = self._byteorder(members.get("byteorder"))
        data = self._mm[pkl.data_offset:pkl.data_offset + pkl.size]
        try:
            self.obj, self.globals = restricted_loads(data)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, RecursionError, OverflowError, MemoryError, UnicodeDecodeError) as e:
            raise FormatError(self.path, f"data.pkl cannot be read safely ({type(e).__name__}: "
                              f"{str(e)[:200]})", section="data.pkl") from None

    def _byteorder(self, member: Any) -> str | bytes:
        """The storages' byte order as torch.load reads it: the ``byteorder`` record, ``little``
        when there is none (torch's default since 2.1); any other record is kept as its bytes and
        refused when a tensor is read, as torch does (``scan`` still reports the pickle)."""
        if member is None:
            return "little"
        raw = self._mm[member.data_offset:member.data_offset + min(member.size, 17)]
        return raw.decode("ascii") if raw in (b"little", b"big") else raw

    @property
    def globals_list(self) -> list[GlobalUse]:
        return list(self.globals.values())

    def storage_bytes(self, ref: StorageRef) -> memoryview:
        member = self._members.get(f"data/{ref.key}")
        if member is None:
            raise FormatError(self.path, f"storage data/{ref.key} is missing")
        return memoryview(self._mm)[member.data_offset:member.data_offset + member.size]

    def tensor(self, ref: TensorRef) -> Any:
        """The tensor ``torch.load`` would give for ``ref``: zero-copy view when possible."""
        import torch

        dtype = getattr(torch, ref.storage.dtype_name)
        member = self._members.get(f"data/{ref.storage.key}")
        if member is None:
            raise FormatError(self.path, f"storage data/{ref.storage.key} is missing")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if member.size != ref.storage.numel * itemsize:
            raise FormatError(self.path, f"storage data/{ref.storage.key} holds {member.size} bytes, "
                              f"the pickle says {ref.storage.numel} x {itemsize}")
        if member.size == 0:
            storage = torch.empty(0, dtype=dtype)
        else:
            storage = torch.frombuffer(self._mm, dtype=torch.uint8, count=member.size,
                                       offset=member.data_offset).view(dtype)
        if len(ref.size) != len(ref.stride) or len(ref.size) > 64 or any(d < 0 for d in ref.size):
            raise FormatError(self.path, f"tensor view {ref.size[:8]}/{ref.stride[:8]} of "
                              f"data/{ref.storage.key} is not a valid shape and stride")
        needed = ref.offset + 1 + sum((d - 1) * s for d, s in zip(ref.size, ref.stride) if d > 0)
        if any(d == 0 for d in ref.size):
            needed = 0
        if needed > ref.storage.numel or ref.offset < 0 or any(s < 0 for s in ref.stride):
            raise FormatError(self.path, f"tensor view {ref.size}/{ref.stride}+{ref.offset} exceeds "
                              f"its storage data/{ref.storage.key}")
        try:
            view = storage.as_strided(ref.size, ref.stride, ref.offset)
        except (RuntimeError, OverflowError) as e:  # torch's own limits (sizes past int64, ...)
            raise FormatError(self.path, f"tensor view {ref.size[:8]}/{ref.stride[:8]}+{ref.offset} of "
                              f"data/{ref.storage.key} cannot be made ({str(e).splitlines()[0][:120]})") from None
        # What torch.load gives is not always the stored bytes: a storage of the other byte order
        # is swapped, and the negative and conjugate bits change the values. Such a tensor is
        # materialised (a copy holding the true values; resolve_neg / resolve_conj semantics).
        flags = _value_flags(self.path, ref)
        if isinstance(self.byteorder, bytes):
            raise FormatError(self.path, f"byteorder record {self.byteorder[:16]!r} is neither 'little' "
                              "nor 'big'", section="byteorder")
        copied = False
        if self.byteorder != sys.byteorder and itemsize > 1:
            view, copied = _byteswapped(view), True
        if "neg" in flags:
            view, copied = (view.neg_() if copied else view.neg()), True
        if "conj" in flags:
            view = view.conj_physical_() if copied else view.conj_physical()
        return view

    def close(self) -> None:
        # Dropped, not closed: tensors viewing the map keep it alive (see Checkpoint.close).
        self._mm = None
        self._fh.close()

    def __enter__(self) -> "TorchZipCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Dtypes whose values torch.load negates for a tensor saved with its negative bit set.
_NEG_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                         "uint8", "complex64", "complex128"})
_CONJ_DTYPES = frozenset({"complex64", "complex128"})


def _value_flags(path: str, ref: TensorRef) -> frozenset[str]:
    """The value flags of ``ref`` (torch's tensor metadata: ``{"neg": True}``, ``{"conj": True}``)
    that ``torch.load`` applies to the stored values; anything else is refused in one line."""
    md = ref.extra.get("metadata")
    if not md:
        return frozenset()
    dtype = ref.storage.dtype_name
    if not isinstance(md, dict) or not all(k in ("neg", "conj") and v is True for k, v in md.items()):
        raise FormatError(path, f"tensor metadata {str(md)[:80]!r} of a data/{ref.storage.key} view "
                          "is not understood", "only torch's {'neg': True} and {'conj': True} are")
    flags = frozenset(md)
    if "neg" in flags and dtype not in _NEG_DTYPES or "conj" in flags and dtype not in _CONJ_DTYPES:
        raise FormatError(path, f"tensor metadata {sorted(flags)} on a {dtype} view of "
                          f"data/{ref.storage.key}: torch cannot give its values either")
    return flags


def _byteswapped(view: Any) -> Any:
    """``view``'s values stored in the other byte order: each element (each half of a complex)
    reversed, as torch.load's ``storage.byteswap(dtype)``; a copy of the view, not its storage."""
    import torch

    t = view.contiguous()
    unit = t.element_size() // 2 if t.is_complex() else t.element_size()
    raw = t.reshape(-1).view(torch.uint8).reshape(-1, unit).flip(-1).contiguous()
    return raw.reshape(-1).view(t.dtype).reshape(t.shape)


def _open_regular(path: str) -> Any:
    """``path`` opened for reading if it is a regular file: a FIFO or device is refused without
    blocking (opened non-blocking, checked, then switched back to blocking reads)."""
    import fcntl
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FormatError(path, "no such file" if e.errno == 2 else f"cannot open ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError(path, "not a regular file", "scan and convert read files only")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _is_legacy_torch(head: bytes) -> bool:
    # A pickle (protocol 2: 0x80 0x02) whose first object is the magic number as a long.
    return head[:2] == b"\x80\x02" and _LEGACY_MAGIC.to_bytes(10, "little") in head[:32]
