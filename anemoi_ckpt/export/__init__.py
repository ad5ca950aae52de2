"""``export``: an ``.anc`` section written back out as plain files other tools read.

Targets (one module each): a safetensors file (:mod:`.stfile`), a torch state dict ``.pt``
(:mod:`.ptfile`), a sharded safetensors folder with transformers' index (:mod:`.sharded`) and,
with the ``[anemoi]`` extra, anemoi-inference's pickled ``inference-*.ckpt``
(:mod:`.anemoi_pickle`). Every output has every tensor of the section, aliases included (as full
copies, or recorded as metadata: see :mod:`.stfile`), and is written atomically. The output is
checked (:mod:`.target`) before the input is opened.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError
from . import anemoi_pickle, ptfile, sharded, stfile
from .target import FORMATS, check_output, guess_format, parse_size

#: transformers' default ``max_shard_size``.
DEFAULT_SHARD_SIZE = "5GB"


@dataclass
class ExportReport:
    source: str
    output: str
    format: str
    section: str
    aliases: str
    tensors: int  # names present in the output (every name of the section)
    stored: int  # tensors actually stored (fewer than ``tensors`` with ``--aliases metadata``)
    files: list[str] = field(default_factory=list)
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export(src: str | os.PathLike, out: str | os.PathLike, *, format: str | None = None,
           section: str = "weights", aliases: str = "materialize",
           max_shard_size: str | int = DEFAULT_SHARD_SIZE, overwrite: bool = False) -> ExportReport:
    """Write ``section`` of the ``.anc`` at ``src`` to ``out`` in ``format`` (default: from
    ``out``'s suffix). An existing ``out`` is kept (one :class:`~anemoi_ckpt.errors.AncError`)
    unless ``overwrite``."""
    from ..reader import open_checkpoint

    src, out = os.fspath(src), os.fspath(out)
    fmt = format or guess_format(out)
    if fmt not in FORMATS:
        raise UsageError(None, f"unknown export format {fmt!r}", f"one of {', '.join(FORMATS)}")
    if aliases not in stfile.ALIAS_MODES:
        raise UsageError(None, f"--aliases {aliases!r}", f"one of {', '.join(stfile.ALIAS_MODES)}")
    if fmt == "anemoi-ckpt" and section != "weights":
        raise UsageError(None, "--format anemoi-ckpt exports the whole model",
                         "leave --section at weights")
    max_bytes = parse_size(max_shard_size)
    target = check_output(out, fmt, overwrite=overwrite)  # before any work
    if fmt == "anemoi-ckpt":
        anemoi_pickle._save_metadata()  # the install hint before the model is built
        anemoi_pickle.write(src, target)
        with open_checkpoint(src) as ck:
            m = ck.tensors("weights")
            n, stored = len(m), len(m.entries)
        return ExportReport(src, out, fmt, section, aliases, n, n, [os.path.basename(target)],
                            os.path.getsize(target))

    with open_checkpoint(src) as ck:
        mapping = ck.tensors(section)
        n = len(mapping)
        stored = len(stfile.names_to_write(mapping, aliases))
        if fmt == "sharded":
            files = sharded.write_folder(target, mapping, aliases, max_bytes)
            size = sum(os.path.getsize(os.path.join(target, f)) for f in files)
            return ExportReport(src, out, fmt, section, aliases, n, stored, files, size)
        from ..container.atomic import atomic_output

        with atomic_output(target) as fh:
            if fmt == "safetensors":
                names = stfile.names_to_write(mapping, aliases)
                stfile.write(fh, mapping, names, stfile.file_metadata(mapping, names, aliases))
            else:
                ptfile.write(fh, mapping, aliases)
                stored = len(mapping.entries) if aliases == "metadata" else n
    return ExportReport(src, out, fmt, section, aliases, n, stored, [os.path.basename(target)],
                        os.path.getsize(target))


__all__ = ["DEFAULT_SHARD_SIZE", "ExportReport", "FORMATS", "export"]
