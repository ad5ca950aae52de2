"""The dtype table: safetensors dtype codes, torch dtypes and numpy dtypes.

Pure data. The codes are safetensors' own, so a tensor member stays an ordinary safetensors file.
torch is imported on first use only: ``inspect`` and ``verify`` never need it, and importing it
costs seconds at every command start.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# code -> (torch attribute name, item size in bytes). Listed in safetensors' order of preference.
_TABLE: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 1),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "C64": ("complex64", 8),
    "F64": ("float64", 8),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
}

#: torch dtype attribute name -> code (no torch import needed).
TORCH_NAME_TO_CODE: dict[str, str] = {attr: code for code, (attr, _) in _TABLE.items()}
#: code -> item size in bytes (also for codes this torch lacks, so headers can still be validated).
ITEMSIZE: dict[str, int] = {code: size for code, (_, size) in _TABLE.items()}


@functools.cache
def _torch_tables() -> tuple[dict[str, "torch.dtype"], dict["torch.dtype", str]]:
    import torch

    code_to_torch = {code: getattr(torch, attr) for code, (attr, _) in _TABLE.items()
                     if hasattr(torch, attr)}
    return code_to_torch, {dt: code for code, dt in code_to_torch.items()}


def __getattr__(name: str) -> Any:
    # CODE_TO_TORCH (code -> torch dtype, for the codes this torch build knows) and TORCH_TO_CODE,
    # built on first access.
    if name == "CODE_TO_TORCH":
        return _torch_tables()[0]
    if name == "TORCH_TO_CODE":
        return _torch_tables()[1]
    raise AttributeError(name)



def code_of(dtype: "torch.dtype") -> str:
    """The safetensors code of a torch dtype, or a clear error for one safetensors cannot hold."""
    code_to_torch, torch_to_code = _torch_tables()
    try:
        return torch_to_code[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot be stored (supported: {', '.join(code_to_torch)})") from None


def nbytes(code: str, shape: list[int] | tuple[int, ...]) -> int:
    n = ITEMSIZE[code]
    for d in shape:
        n *= d
    return n
