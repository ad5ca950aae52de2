"""Name -> tensor for one tensor section of an open ``.anc``: checked on creation, lazy after.

Creating the mapping reads only the safetensors header (checked against the manifest's header
digest, names and count); each tensor is a zero-copy view over the checkpoint's private memory
map, made on first access and cached so aliases and repeated reads return the same object.

A compressed section (format 1.2) is decoded tensor by tensor instead: each read decodes that
tensor's frames into a new tensor, and the cache holds it weakly (aliases still get the same
object while it lives), so streaming through a section keeps memory near one tensor.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .container import dtypes
from .container import compressed, stformat
from .errors import FormatError, IntegrityError, VersionError
from .container.schema import Section
from .container.zipread import Member

if TYPE_CHECKING:
    import torch

    from .reader import Checkpoint


class TensorMapping(Mapping[str, "torch.Tensor"]):
    """Name -> tensor for one section; the header is checked against the manifest on creation."""

    def __init__(self, ck: Checkpoint, sec: Section, member: Member) -> None:
        self._ck = ck
        self.section = sec
        table = sec.tensors
        assert table is not None
        path, label = ck.path, sec.path
        try:
            n = stformat.read_header_length(ck.read_bytes(member.data_offset, 8), member.size)
            prefix = ck.read_bytes(member.data_offset, 8 + n)
            if hashlib.sha256(prefix).hexdigest() != table.header_digest:
                raise IntegrityError(path, "header digest mismatch", "the file is damaged",
                                     section=label)
            enc = None if sec.encoding is None else compressed.check_encoding(
                path, label, sec.encoding.model_dump())
            # data_offsets are logical: a compressed section's header describes its logical size
            entries, _ = stformat.parse_header(prefix[8:], member.size if enc is None else enc["size"])
        except stformat.HeaderError as e:
            raise FormatError(path, str(e), section=label) from None
        if {e.name for e in entries} != set(table.digests) or len(entries) != table.count:
            raise FormatError(path, "tensor names differ from the manifest", section=label)
        base = member.data_offset + 8 + n
        self.entries = {e.name: e for e in entries}
        self._offsets = {e.name: base + e.begin for e in entries}
        #: name -> its frames, for a compressed section (None: tensors view the file's bytes)
        self.frames = None if enc is None else compressed.frame_layout(
            path, label, entries, enc, base, member.size - 8 - n)
        for alias, target in table.aliases.items():
            if target not in self.entries or alias in self.entries:
                raise FormatError(path, f"bad alias {alias!r} -> {target!r}", section=label)
        self.aliases = dict(table.aliases)
        self._cache: Any = {} if self.frames is None else weakref.WeakValueDictionary()

    @property
    def compressed(self) -> bool:
        return self.frames is not None

    def stored_span(self, name: str) -> tuple[int, int]:
        """(file offset, stored bytes) of a stored tensor: its bytes, or its frames."""
        if self.frames is not None:
            tf = self.frames[name]
            return tf.offset, tf.stored
        return self._offsets[name], self.entries[name].nbytes

    def digest(self, name: str) -> str:
        """sha256 hex of a stored tensor's logical bytes, computed from the file (a compressed
        tensor is decoded a chunk at a time). A damaged frame raises :class:`IntegrityError`."""
        if self.frames is None:
            return self._ck.digest_range(self._offsets[name], self.entries[name].nbytes)
        try:
            return compressed.digest(self._ck.read_bytes, self.frames[name])
        except compressed.codec.FrameError as e:
            raise compressed.frame_problem(self._ck.path, self.section.path, name, e) from None

    def _decode(self, target: str, e: stformat.TensorEntry) -> torch.Tensor:
        import torch

        from .container.dtypes import CODE_TO_TORCH

        out = torch.empty(e.nbytes, dtype=torch.uint8)
        assert self.frames is not None
        try:
            compressed.decode_into(self._read_buffer, self.frames[target], memoryview(out.numpy()))
        except compressed.codec.FrameError as err:
            raise compressed.frame_problem(self._ck.path, self.section.path, target, err) from None
        dtype = CODE_TO_TORCH[e.dtype]
        return (out if dtype == torch.uint8 else out.view(dtype)).reshape(e.shape)

    def _read_buffer(self, start: int, n: int) -> Any:
        buf, offset = self._ck.buffer(start, n)  # the map itself (local): no copy of the frames
        return memoryview(buf)[offset:offset + n]

    def __getitem__(self, name: str) -> torch.Tensor:
        target = self.aliases.get(name, name)
        t = self._cache.get(target)
        if t is None:
            e = self.entries[target]
            if e.dtype not in dtypes.CODE_TO_TORCH:  # a valid code an older torch lacks (F8_E8M0)
                import torch

                raise VersionError(self._ck.path, f"tensor {target!r}: dtype {e.dtype} is not "
                                   f"supported by torch {torch.__version__}", "upgrade torch",
                                   section=self.section.path)
            from .container.tensorio import view_tensor  # torch is loaded on the first tensor, not at import

            if self.frames is not None:
                t = self._decode(target, e)
            else:
                # A view of the private map (local), or of the fetched bytes (a URL).
                buf, offset = self._ck.buffer(self._offsets[target], e.nbytes)
                t = view_tensor(buf, offset, e.nbytes, e.dtype, e.shape)
            self._cache[target] = t
        return t

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape from the header, without reading (or fetching) its bytes."""
        return tuple(self.entries[self.aliases.get(name, name)].shape)

    def __iter__(self) -> Iterator[str]:
        yield from self.entries
        yield from self.aliases

    def __len__(self) -> int:
        return len(self.entries) + len(self.aliases)

    def __contains__(self, name: object) -> bool:
        return name in self.entries or name in self.aliases
