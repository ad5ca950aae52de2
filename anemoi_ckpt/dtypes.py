"""The dtype table: safetensors dtype codes, torch dtypes and numpy dtypes.

Pure data. The codes are safetensors' own, so a tensor member stays an ordinary safetensors file.
"""

from __future__ import annotations

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

#: code -> torch dtype, for the codes this torch build knows.
CODE_TO_TORCH: dict[str, torch.dtype] = {
    code: getattr(torch, attr) for code, (attr, _) in _TABLE.items() if hasattr(torch, attr)
}
#: torch dtype -> code.
TORCH_TO_CODE: dict[torch.dtype, str] = {dt: code for code, dt in CODE_TO_TORCH.items()}
#: code -> item size in bytes (also for codes this torch lacks, so headers can still be validated).
ITEMSIZE: dict[str, int] = {code: size for code, (_, size) in _TABLE.items()}



def code_of(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype, or a clear error for one safetensors cannot hold."""
    try:
        return TORCH_TO_CODE[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot be stored (supported: {', '.join(CODE_TO_TORCH)})") from None


def nbytes(code: str, shape: list[int] | tuple[int, ...]) -> int:
    n = ITEMSIZE[code]
    for d in shape:
        n *= d
    return n
