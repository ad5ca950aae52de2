"""torch's zip checkpoint layout (``torch.save`` since 1.6, Lightning ``.ckpt``, anemoi ``.ckpt``).

``<root>/data.pkl`` is the pickle, ``<root>/data/<key>`` the raw storages (STORED). The pickle is
read with :class:`RestrictedUnpickler`; storages are memory-mapped and turned into tensors only
when asked for, so a conversion streams tensor by tensor.
"""

from __future__ import annotations

import mmap
import os
import pickle
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
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:
            raise FormatError(self.path, f"cannot open ({e.strerror})") from None
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
        data = self._mm[pkl.data_offset:pkl.data_offset + pkl.size]
        try:
            self.obj, self.globals = restricted_loads(data)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, RecursionError, OverflowError, MemoryError, UnicodeDecodeError) as e:
            raise FormatError(self.path, f"data.pkl cannot be read safely ({type(e).__name__}: "
                              f"{str(e)[:200]})", section="data.pkl") from None

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
        needed = ref.offset + 1 + sum((d - 1) * s for d, s in zip(ref.size, ref.stride) if d > 0)
        if any(d == 0 for d in ref.size):
            needed = 0
        if needed > ref.storage.numel or ref.offset < 0 or any(s < 0 for s in ref.stride):
            raise FormatError(self.path, f"tensor view {ref.size}/{ref.stride}+{ref.offset} exceeds "
                              f"its storage data/{ref.storage.key}")
        return storage.as_strided(ref.size, ref.stride, ref.offset)

    def close(self) -> None:
        # Dropped, not closed: tensors viewing the map keep it alive (see Checkpoint.close).
        self._mm = None
        self._fh.close()

    def __enter__(self) -> "TorchZipCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_legacy_torch(head: bytes) -> bool:
    # A pickle (protocol 2: 0x80 0x02) whose first object is the magic number as a long.
    return head[:2] == b"\x80\x02" and _LEGACY_MAGIC.to_bytes(10, "little") in head[:32]
