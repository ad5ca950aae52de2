"""Between torch tensors and raw bytes: flattening for writing, zero-copy views for reading.

Writing takes any strided CPU/accelerator tensor (non-contiguous, conjugate views, 0-d, empty)
and yields little-endian C-order bytes without a copy when the tensor is already contiguous on
the CPU. Reading builds tensors directly over a memory map.
"""

from __future__ import annotations

import mmap
import sys
import weakref
from dataclasses import dataclass

import torch

from .dtypes import CODE_TO_TORCH, code_of

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
    raise ImportError("anemoi-ckpt needs a little-endian machine")


@dataclass
class FlatTensor:
    code: str
    shape: tuple[int, ...]
    data: memoryview  # raw bytes; keeps ``owner`` alive through ``_owner``
    _owner: object

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def flatten(t: torch.Tensor) -> FlatTensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{t.layout} tensors cannot be stored; convert to dense first")
    code = code_of(t.dtype)
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()  # one tensor at a time: memory stays bounded by the largest tensor
    flat = t.reshape(-1)
    raw = flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)
    return FlatTensor(code, tuple(t.shape), memoryview(raw.numpy()).cast("B"), raw)


def alias_key(t: torch.Tensor) -> tuple | None:
    """Identity of a tensor's view of its storage: equal keys mean the same bytes, same layout."""
    if t.layout != torch.strided or t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            tuple(t.stride()), t.dtype)


class AliasTracker:
    """Detects names that refer to the same view of the same storage.

    Holds only weak references: a storage freed after its tensor was written may have its address
    reused, and a dead reference means the new tensor is *not* an alias.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple, tuple[str, weakref.ref]] = {}

    def target_of(self, name: str, t: torch.Tensor) -> str | None:
        key = alias_key(t)
        if key is None:
            return None
        hit = self._seen.get(key)
        if hit is not None and hit[1]() is not None:
            return hit[0]
        self._seen[key] = (name, weakref.ref(t))
        return None


def view_tensor(buf: mmap.mmap, offset: int, nbytes: int, code: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor over ``buf[offset:offset+nbytes]`` with no copy (the map is private: writes to the
    tensor never reach the file)."""
    dtype = CODE_TO_TORCH.get(code)
    if dtype is None:
        raise TypeError(f"dtype {code} is not supported by this torch ({torch.__version__})")
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=offset)
    return (raw if dtype == torch.uint8 else raw.view(dtype)).reshape(shape)
