"""anemoi-ckpt: a pickle-free, versioned checkpoint container (``.anc``) for Anemoi models.

Public API::

    anemoi_ckpt.save(path, tensors, kind=..., metadata=..., anemoi_metadata=..., ...)
    with anemoi_ckpt.Writer(path, ...) as w: w.add(name, tensor)
    with anemoi_ckpt.open(path) as ck: ck.tensors(), ck.state_dict(), ck.verify(), ck.lineage, ...
    anemoi_ckpt.convert(src, dst, to="inference")   # any legacy format or a training .anc
    anemoi_ckpt.diff(a, b)

This package imports neither Lightning nor PEFT, and reading never unpickles.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import AncError, FormatError, IntegrityError, UsageError, VersionError  # noqa: E402
from .reader import Checkpoint, TensorMapping, UnknownSectionWarning, open_checkpoint  # noqa: E402
from .container.schema import FORMAT_VERSION, SCHEMA_VERSION, Lineage, LineageRecord, Manifest, Metadata  # noqa: E402
from .verify import VerifyReport  # noqa: E402
# Eager (no torch at import: tensors are only touched for digests that differ). A lazy
# __getattr__ would not do: importing the submodule binds the name ``diff`` to the module.
from .compare.diff import DiffReport, diff  # noqa: E402


def __getattr__(name: str):  # noqa: ANN202
    # The writer needs torch; loading it lazily keeps `import anemoi_ckpt` (and `inspect`,
    # `verify`) free of torch's seconds-long import.
    if name in ("Writer", "save"):
        from . import writer

        return getattr(writer, name)
    if name == "convert":  # the package, callable: anemoi_ckpt.convert(src, dst, to="inference")
        import importlib

        return importlib.import_module(".convert", __name__)
    raise AttributeError(f"module 'anemoi_ckpt' has no attribute {name!r}")


open = open_checkpoint  # noqa: A001 - ``anemoi_ckpt.open(path)`` is the documented entry point

__all__ = [
    "AncError", "Checkpoint", "DiffReport", "FORMAT_VERSION", "FormatError", "IntegrityError", "Lineage",
    "LineageRecord", "Manifest", "Metadata", "SCHEMA_VERSION", "TensorMapping",
    "UnknownSectionWarning", "UsageError", "VerifyReport", "VersionError", "Writer", "__version__",
    "convert", "diff", "open", "open_checkpoint", "save",
]
