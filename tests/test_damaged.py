"""Damaged and hostile input: every case ends in one :class:`anemoi_ckpt.AncError` naming the file
(and the section), or, for damage only a digest can see, a file that opens and a ``verify()`` that
names the damaged section and tensor. Never another exception type, never a hang, never an
allocation sized by a length read from the file.

Damage is made precisely: single bytes are edited in a real file written by ``anemoi_ckpt.save``,
or the archive is rebuilt member by member (:class:`Archive`) with one thing changed and every
other digest and size in the manifest kept consistent, so the only thing wrong is the thing tested.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import anemoi_ckpt
from anemoi_ckpt import AncError, FormatError, IntegrityError, UnknownSectionWarning, VersionError
from anemoi_ckpt import reader as reader_mod
from anemoi_ckpt.container import stformat
from anemoi_ckpt.demo.data import demo_anemoi_metadata, demo_graph, demo_state_dict
from anemoi_ckpt.container.zipwrite import ZipWriter
from tests.conftest import arrays_equal, section_span

# --- building damaged files ------------------------------------------------------------------

_CD = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory file header, 46 bytes
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header, 30 bytes


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Archive:
    """An ``.anc`` as an editable list of (member name, bytes), written back with ZipWriter.

    ``write`` first makes the manifest agree with the members (sizes, digests of plain sections,
    header digests of tensor sections) unless told not to, so a test changes exactly one thing.
    """

    def __init__(self, path: Path) -> None:
        with zipfile.ZipFile(path) as zf:
            self.items: list[tuple[str, bytes]] = [(i.filename, zf.read(i)) for i in zf.infolist()]
        self.root = self.items[0][0].split("/", 1)[0]

    def name(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def __getitem__(self, rel: str) -> bytes:
        return next(d for n, d in self.items if n == self.name(rel))

    def __setitem__(self, rel: str, data: bytes) -> None:
        name = self.name(rel)
        for i, (n, _) in enumerate(self.items):
            if n == name:
                self.items[i] = (n, data)
                return
        self.items.insert(len(self.items) - 1, (name, data))  # before the manifest

    def add_raw(self, name: str, data: bytes) -> None:
        """A member with exactly this (full) name, before the manifest."""
        self.items.insert(len(self.items) - 1, (name, data))

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self["manifest.json"])

    @manifest.setter
    def manifest(self, obj: dict[str, Any]) -> None:
        self["manifest.json"] = json.dumps(obj).encode()

    def section(self, manifest: dict[str, Any], rel: str) -> dict[str, Any]:
        return next(s for s in manifest["sections"] if s["path"] == rel)

    def refresh(self) -> None:
        m = self.manifest
        names = {n for n, _ in self.items}
        for sec in m["sections"]:
            if self.name(sec["path"]) not in names:
                continue
            data = self[sec["path"]]
            sec["size"] = len(data)
            if sec.get("tensors"):
                (n,) = struct.unpack("<Q", data[:8]) if len(data) >= 8 else (len(data),)
                if 8 + n <= len(data):
                    sec["tensors"]["header_digest"] = hashlib.sha256(data[:8 + n]).hexdigest()
            else:
                sec["digest"] = sha(data)
        self.manifest = m

    def write(self, path: Path, *, refresh: bool = True) -> Path:
        if refresh:
            self.refresh()
        # ZipWriter refuses unsafe names: such a member is written under a placeholder of the same
        # length, whose bytes are then replaced in the local header and the central directory.
        renames: dict[bytes, bytes] = {}
        with open(path, "wb") as fh:
            zw = ZipWriter(fh)
            for i, (name, data) in enumerate(self.items):
                zw._names.discard(name)  # so a test can write duplicate names
                try:
                    zw.write_member(name, data)
                except ValueError:  # refused before anything was written
                    raw = name.encode()
                    placeholder = f"~{i}~".ljust(len(raw), "~").encode()
                    renames[placeholder] = raw
                    zw.write_member(placeholder.decode(), data)
            zw.finish()
        if renames:
            blob = path.read_bytes()
            for placeholder, raw in renames.items():
                assert blob.count(placeholder) == 2  # local header and central directory
                blob = blob.replace(placeholder, raw)
            path.write_bytes(blob)
        return path


def tensor_member(header: dict[str, Any] | bytes, payload: bytes) -> bytes:
    """A safetensors member with exactly this header (a dict, or raw JSON bytes) and payload."""
    js = header if isinstance(header, bytes) else json.dumps(header).encode()
    return stformat.padded_header(js) + payload


def split_tensor_member(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def patched(src: Path, dst: Path, edits: dict[int, bytes]) -> Path:
    data = bytearray(src.read_bytes())
    for offset, new in edits.items():
        data[offset:offset + len(new)] = new
    dst.write_bytes(bytes(data))
    return dst


def flipped(src: Path, dst: Path, offset: int, mask: int = 0xFF) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= mask
    dst.write_bytes(bytes(data))
    return dst


def central_entries(path: Path) -> dict[str, int]:
    """Member name -> offset of its central directory header."""
    with zipfile.ZipFile(path) as zf:
        pos = zf.start_dir
    data = path.read_bytes()
    out = {}
    while data[pos:pos + 4] == b"PK\x01\x02":
        f = _CD.unpack_from(data, pos)
        out[data[pos + 46:pos + 46 + f[10]].decode()] = pos
        pos += 46 + f[10] + f[11] + f[12]
    return out


def local_header(path: Path, name: str) -> int:
    with zipfile.ZipFile(path) as zf:
        return zf.getinfo(name).header_offset


# --- checking the outcome ----------------------------------------------------------------------

def check_error(err: BaseException, path: Path, exc_type: type[AncError], *fragments: str,
                section: str | None = None) -> None:
    """``err`` is exactly ``exc_type``, one line, starting with the file name (and the section),
    and holds every fragment."""
    assert type(err) is exc_type, f"{type(err).__name__}: {err}"
    msg = str(err)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    if section is not None:
        assert msg.startswith(f"{path}: section {section}: "), msg
        assert err.section == section
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


def open_fails(path: Path, exc_type: type[AncError], *fragments: str,
               section: str | None = None) -> AncError:
    with pytest.raises(AncError) as ei:
        anemoi_ckpt.open(path).close()
    check_error(ei.value, path, exc_type, *fragments, section=section)
    return ei.value


def access_fails(path: Path, access: Callable[[Any], Any], exc_type: type[AncError],
                 *fragments: str, section: str | None = None) -> AncError:
    """The file opens, but ``access(ck)`` raises."""
    with anemoi_ckpt.open(path) as ck:
        with pytest.raises(AncError) as ei:
            access(ck)
    check_error(ei.value, path, exc_type, *fragments, section=section)
    return ei.value


def damaged_sections(path: Path) -> tuple[Any, dict[str, Any]]:
    with anemoi_ckpt.open(path) as ck:
        report = ck.verify(progress=False)
    assert not report.ok
    return report, {s.path: s for s in report.damaged}


# --- truncation ----------------------------------------------------------------------------------

def boundaries(path: Path) -> Iterator[tuple[str, int]]:
    """Every member's local header, data start and data end, points inside each member, the central
    directory start and the end record."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        cd = zf.start_dir
    with anemoi_ckpt.open(path) as ck:
        spans = {m.name: (m.data_offset, m.size) for m in ck._members.values()}
    for info in infos:
        start, size = spans[info.filename]
        yield f"{info.filename} local header", info.header_offset
        yield f"{info.filename} local header +10", info.header_offset + 10
        yield f"{info.filename} start", start
        yield f"{info.filename} start+1", start + 1
        yield f"{info.filename} +8", start + 8
        yield f"{info.filename} middle", start + size // 2
        yield f"{info.filename} end-1", start + size - 1
        yield f"{info.filename} end", start + size
    yield "central directory start", cd
    yield "central directory +46", cd + 46
    size = path.stat().st_size
    yield "end record", size - 22
    yield "last byte", size - 1
    yield "empty", 0


def test_truncated_at_every_boundary(demo_file: Path, tmp_path: Path) -> None:
    data = demo_file.read_bytes()
    cuts = list(boundaries(demo_file))
    assert len(cuts) > 60
    bad = tmp_path / "cut.anc"
    for where, n in cuts:
        bad.write_bytes(data[:n])
        try:
            if n == 0:
                open_fails(bad, FormatError, "empty file")
            else:
                open_fails(bad, FormatError, "not a zip archive or truncated",
                           "the file may be incomplete")
        except AssertionError as e:
            raise AssertionError(f"truncated at {where} ({n} bytes kept): {e}") from e


def test_every_truncation_of_a_small_file(small: "Small", tmp_path: Path) -> None:
    """Every third proper prefix of a small complete file (and the last few bytes) is refused."""
    bad = tmp_path / "cut.anc"
    for n in [*range(0, len(small.data), 3), *range(len(small.data) - 64, len(small.data))]:
        bad.write_bytes(small.data[:n])
        with pytest.raises(FormatError):
            anemoi_ckpt.open(bad).close()


# --- one flipped byte per section ----------------------------------------------------------------

JSON_SECTIONS = [("metadata.json", "metadata"), ("lineage.json", "lineage"),
                 ("anemoi-metadata/anemoi.json", "anemoi_metadata"),
                 ("anemoi-metadata/anemoi.json", "supporting_arrays")]


@pytest.mark.parametrize("rel, attr", JSON_SECTIONS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_in_json_section(demo_file: Path, tmp_path: Path, rel: str, attr: str,
                                      where: str) -> None:
    start, size = section_span(demo_file, rel)
    offset = {"first": start, "middle": start + size // 2, "last": start + size - 1}[where]
    bad = flipped(demo_file, tmp_path / "bad.anc", offset)
    # The file opens (JSON sections are read on demand); reading the section checks its digest.
    access_fails(bad, lambda ck: getattr(ck, attr), IntegrityError, "digest mismatch",
                 "anemoi-ckpt verify", section=rel)
    report, damaged = damaged_sections(bad)
    assert list(damaged) == [rel] and damaged[rel].problem == "digest mismatch"
    assert report.content_id_ok


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_in_manifest(demo_file: Path, tmp_path: Path, where: str) -> None:
    start, size = section_span(demo_file, "manifest.json")
    offset = {"first": start, "middle": start + size // 2, "last": start + size - 1}[where]
    for mask in (0xFF, 0x01):  # 0x01 keeps most JSON valid: only the CRC-32 can tell
        bad = flipped(demo_file, tmp_path / "bad.anc", offset, mask)
        open_fails(bad, IntegrityError, "CRC-32 mismatch", "damaged", section="manifest.json")


def test_flipped_digit_in_manifest_uuid_is_caught(demo_file: Path, tmp_path: Path) -> None:
    """A change that leaves valid JSON and a valid schema (the uuid) is still damage."""
    with anemoi_ckpt.open(demo_file) as ck:
        uuid = ck.uuid
    start, size = section_span(demo_file, "manifest.json")
    at = demo_file.read_bytes().index(uuid.encode(), start)
    bad = patched(demo_file, tmp_path / "bad.anc", {at: b"f" if uuid[0] != "f" else b"e"})
    open_fails(bad, IntegrityError, "CRC-32 mismatch", section="manifest.json")


@pytest.mark.parametrize("array", ["latitudes", "longitudes"])
def test_flipped_byte_in_supporting_array(demo_file: Path, tmp_path: Path, array: str) -> None:
    rel = f"anemoi-metadata/data/{array}.numpy"
    start, size = section_span(demo_file, rel)
    bad = flipped(demo_file, tmp_path / "bad.anc", start + size // 2)
    report, damaged = damaged_sections(bad)
    assert list(damaged) == [rel] and damaged[rel].problem == "digest mismatch"
    assert report.content_id_ok


def _stored_tensors(path: Path, section: str) -> list[tuple[str, int, int]]:
    with anemoi_ckpt.open(path) as ck:
        m = ck.tensors(section)
        return [(n, m._offsets[n], e.nbytes) for n, e in m.entries.items()]


@pytest.mark.parametrize("section", ["weights", "graph"])
def test_flipped_byte_in_every_tensor(demo_file: Path, demo_sd: dict[str, torch.Tensor],
                                      tmp_path: Path, section: str) -> None:
    """Only hashing can see this: the file opens and reads, verify names section and tensor."""
    rel = f"{section}.safetensors"
    tensors = _stored_tensors(demo_file, section)
    assert len(tensors) >= 4
    for name, offset, nbytes in tensors:
        for at in sorted({offset, offset + nbytes - 1}):
            bad = flipped(demo_file, tmp_path / f"{section}.anc", at, 0x10)
            with anemoi_ckpt.open(bad) as ck:
                report = ck.verify(progress=False)
                changed = ck.tensors(section)[name]
                if section == "weights" and changed.dtype != torch.bool:
                    assert not torch.equal(changed, demo_sd[name])
            assert not report.ok
            assert [(s.path, s.damaged_tensors) for s in report.damaged] == [(rel, [name])]
            assert name in report.damaged[0].problem
            assert report.content_id_ok is (section != "weights")


@pytest.mark.parametrize("section", ["weights", "graph"])
@pytest.mark.parametrize("where, exc_type, fragment", [
    ("prefix low byte", IntegrityError, "header digest mismatch"),
    ("prefix high byte", FormatError, "more than the 100 MB limit"),
    ("json first byte", IntegrityError, "header digest mismatch"),
    ("json middle", IntegrityError, "header digest mismatch"),
    ("padding", IntegrityError, "header digest mismatch"),
])
def test_flipped_byte_in_safetensors_header(demo_file: Path, tmp_path: Path, section: str,
                                            where: str, exc_type: type[AncError],
                                            fragment: str) -> None:
    rel = f"{section}.safetensors"
    start, _ = section_span(demo_file, rel)
    data = demo_file.read_bytes()
    (n,) = struct.unpack("<Q", data[start:start + 8])
    js_len = len(data[start + 8:start + 8 + n].rstrip(b" "))
    assert js_len < n  # the header is padded to the alignment
    offset, mask = {"prefix low byte": (start, 0x01), "prefix high byte": (start + 7, 0x80),
                    "json first byte": (start + 8, 0xFF), "json middle": (start + 8 + js_len // 2, 0x01),
                    "padding": (start + 8 + n - 1, 0x01)}[where]
    bad = flipped(demo_file, tmp_path / "bad.anc", offset, mask)
    access_fails(bad, lambda ck: ck.tensors(section), exc_type, fragment, section=rel)
    report, damaged = damaged_sections(bad)
    assert list(damaged) == [rel] and fragment in damaged[rel].problem
    assert report.content_id_ok is (section != "weights")


# --- the safetensors header length prefix ------------------------------------------------------

@pytest.mark.parametrize("claim", ["2**60", "2**62", "2**64-1", "100 MB limit", "member+1"])
def test_header_length_beyond_the_member(demo_file: Path, tmp_path: Path, claim: str) -> None:
    """Refused from the 8-byte prefix alone: nothing sized by the claim is read or allocated."""
    start, size = section_span(demo_file, "weights.safetensors")
    n = {"2**60": 2**60, "2**62": 2**62, "2**64-1": 2**64 - 1, "100 MB limit": stformat.MAX_HEADER,
         "member+1": size - 8 + 1}[claim]
    bad = patched(demo_file, tmp_path / "bad.anc", {start: struct.pack("<Q", n)})
    with anemoi_ckpt.open(bad) as ck:
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(AncError) as ei:
            ck.tensors()
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < 1.0 and peak < 1 << 20
    fragment = "more than the 100 MB limit" if n > stformat.MAX_HEADER else \
        f"header claims {n} bytes but the member holds only {size - 8}"
    check_error(ei.value, bad, FormatError, fragment, section="weights.safetensors")


def test_member_too_short_for_a_header(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    a["graph.safetensors"] = b"\x01\x00\x00"
    bad = a.write(tmp_path / "bad.anc")
    access_fails(bad, lambda ck: ck.tensors("graph"), FormatError, "too short for a safetensors header",
                 section="graph.safetensors")


# --- hostile safetensors headers (digests consistent: only the header's content is wrong) ------

def _rewrite_weights(demo_file: Path, tmp_path: Path,
                     edit: Callable[[dict[str, Any], bytes], tuple[dict[str, Any] | bytes, bytes]]) -> Path:
    a = Archive(demo_file)
    header, payload = split_tensor_member(a["weights.safetensors"])
    new_header, new_payload = edit(header, payload)
    a["weights.safetensors"] = tensor_member(new_header, new_payload)
    return a.write(tmp_path / "hostile.anc")


def _in_offset_order(header: dict[str, Any]) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _overlap(h: dict[str, Any], p: bytes) -> tuple[dict[str, Any], bytes]:
    name = _in_offset_order(h)[3]
    b, e = h[name]["data_offsets"]
    h[name]["data_offsets"] = [b - 4, e - 4]
    return h, p


def _gap(h: dict[str, Any], p: bytes) -> tuple[dict[str, Any], bytes]:
    name = _in_offset_order(h)[3]
    b, e = h[name]["data_offsets"]
    h[name]["data_offsets"] = [b + 4, e + 4]
    return h, p


def _first_f32(h: dict[str, Any]) -> str:
    return next(n for n in _in_offset_order(h) if h[n]["dtype"] == "F32" and len(h[n]["shape"]) == 2)


def _shape(h: dict[str, Any], p: bytes) -> tuple[dict[str, Any], bytes]:
    h[_first_f32(h)]["shape"][0] -= 1
    return h, p


def _dtype(h: dict[str, Any], p: bytes) -> tuple[dict[str, Any], bytes]:
    h[_first_f32(h)]["dtype"] = "F64"
    return h, p


def _unknown_dtype(h: dict[str, Any], p: bytes) -> tuple[dict[str, Any], bytes]:
    h[_first_f32(h)]["dtype"] = "F128"
    return h, p


def _duplicate(h: dict[str, Any], p: bytes) -> tuple[bytes, bytes]:
    name = _in_offset_order(h)[0]
    js = json.dumps(h)
    extra = json.dumps({name: h[name]})[1:-1]
    return ("{" + extra + ", " + js[1:]).encode(), p


def _trailing(h: dict[str, Any], p: bytes) -> tuple[dict[str, Any], bytes]:
    return h, p + b"\0" * 16


def _huge_empty(h: dict[str, Any], p: bytes) -> tuple[dict[str, Any], bytes]:
    # Zero bytes, so byte counts agree, but torch cannot even describe it: still our error.
    end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
    h["huge"] = {"dtype": "F32", "shape": [2**62, 2**62, 0], "data_offsets": [end, end]}
    return h, p


HOSTILE_HEADERS = {
    "overlap": (_overlap, "overlaps the previous tensor"),
    "gap": (_gap, "leaves a gap before it"),
    "shape not matching bytes": (_shape, "which needs"),
    "dtype not matching bytes": (_dtype, "bytes for a F64 tensor"),
    "unknown dtype": (_unknown_dtype, "unknown dtype 'F128'"),
    "duplicate name": (_duplicate, "duplicate tensor name"),
    "bytes after the last tensor": (_trailing, "tensors cover"),
    "huge empty shape": (_huge_empty, "is too large"),
    "negative offset": (lambda h, p: ({**h, _first_f32(h): {**h[_first_f32(h)], "data_offsets": [-4, 0]}}, p),
                        "data_offsets must be [begin, end]"),
    "begin after end": (lambda h, p: ({**h, _first_f32(h): {**h[_first_f32(h)],
                                                            "data_offsets": [8, 4]}}, p),
                        "data_offsets must be [begin, end]"),
    "float shape": (lambda h, p: ({**h, _first_f32(h): {**h[_first_f32(h)], "shape": [1.5]}}, p),
                    "shape must be a list of non-negative integers"),
    "entry not an object": (lambda h, p: ({**h, _first_f32(h): [1, 2]}, p), "entry is not an object"),
    "not an object": (lambda h, p: (b"[1, 2, 3]", p), "header is not a JSON object"),
    "not JSON": (lambda h, p: (b"{\"a\": ", p), "header is not valid JSON"),
    "not UTF-8": (lambda h, p: (b"{\"\xff\xfe\": 1}", p), "header is not UTF-8"),
    "deeply nested": (lambda h, p: (b"[" * 100_000 + b"]" * 100_000, p), "header is not valid JSON"),
    "bad __metadata__": (lambda h, p: ({**h, "__metadata__": {"a": 1}}, p),
                         "__metadata__ must map strings to strings"),
}


@pytest.mark.parametrize("case", HOSTILE_HEADERS)
def test_hostile_safetensors_header(demo_file: Path, tmp_path: Path, case: str) -> None:
    edit, fragment = HOSTILE_HEADERS[case]
    bad = _rewrite_weights(demo_file, tmp_path, edit)
    access_fails(bad, lambda ck: ck.tensors(), FormatError, fragment, section="weights.safetensors")
    report, damaged = damaged_sections(bad)
    assert list(damaged) == ["weights.safetensors"] and fragment in damaged["weights.safetensors"].problem


def test_header_names_differ_from_the_manifest(demo_file: Path, tmp_path: Path) -> None:
    def rename(h: dict[str, Any], p: bytes) -> tuple[dict[str, Any], bytes]:
        name = _first_f32(h)
        h["renamed"] = h.pop(name)
        return h, p

    bad = _rewrite_weights(demo_file, tmp_path, rename)
    access_fails(bad, lambda ck: ck.tensors(), FormatError, "tensor names differ from the manifest",
                 section="weights.safetensors")


def test_dtype_this_torch_lacks(demo_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid code an older torch does not have: a clear error, not a TypeError from torch."""
    from anemoi_ckpt.container import dtypes

    monkeypatch.delitem(dtypes.CODE_TO_TORCH, "F32")
    with anemoi_ckpt.open(demo_file) as ck:
        mapping = ck.tensors()  # the header is fine
        assert mapping["model.num_steps"].item() == 0
        with pytest.raises(AncError) as ei:
            mapping["model.encoder.0.emb_nodes_src.weight"]
    check_error(ei.value, demo_file, VersionError, "dtype F32 is not supported by torch",
                "upgrade torch", section="weights.safetensors")


# --- the zip container -------------------------------------------------------------------------

def test_duplicate_member_names(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    a.add_raw(a.name("metadata.json"), a["metadata.json"])
    bad = a.write(tmp_path / "bad.anc")
    open_fails(bad, FormatError, "duplicate member name 'demo/metadata.json'", "tampered")


def test_deflated_member(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    bad = tmp_path / "bad.anc"
    with zipfile.ZipFile(bad, "w") as zf:
        for name, data in a.items:
            method = zipfile.ZIP_DEFLATED if name.endswith("lineage.json") else zipfile.ZIP_STORED
            zf.writestr(name, data, compress_type=method)
    open_fails(bad, FormatError, "member 'demo/lineage.json' is compressed (method 8)",
               "members of an .anc are STORED")


def test_a_zip_of_the_members_made_by_zipfile_reads(demo_file: Path, tmp_path: Path) -> None:
    """The control for the case above: STORED but unaligned members from another zip writer."""
    a = Archive(demo_file)
    other = tmp_path / "other.anc"
    with zipfile.ZipFile(other, "w") as zf:
        for name, data in a.items:
            zf.writestr(name, data)
    with anemoi_ckpt.open(other) as ck:
        assert ck.verify(progress=False).ok


def test_encrypted_flag(demo_file: Path, tmp_path: Path) -> None:
    at = central_entries(demo_file)["demo/metadata.json"] + 8
    (flags,) = struct.unpack_from("<H", demo_file.read_bytes(), at)
    bad = patched(demo_file, tmp_path / "bad.anc", {at: struct.pack("<H", flags | 1)})
    open_fails(bad, FormatError, "member 'demo/metadata.json' is encrypted")


@pytest.mark.parametrize("name", ["demo/../evil.json", "demo/./x.json", "/demo/x.json",
                                  "demo//x.json", "demo\\x.json", "demo/../", "demo/a\nb.json"])
def test_unsafe_member_name(demo_file: Path, tmp_path: Path, name: str) -> None:
    a = Archive(demo_file)
    a.add_raw(name, b"" if name.endswith("/") else b"{}")
    bad = a.write(tmp_path / "bad.anc")
    open_fails(bad, FormatError, f"unsafe member name {name!r}")


def test_two_root_folders(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    a.add_raw("other/metadata.json", a["metadata.json"])
    bad = a.write(tmp_path / "bad.anc")
    open_fails(bad, FormatError, "expected one root folder, found 2 ('demo', 'other')", "not an .anc")


def test_member_outside_the_root(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    a.add_raw("README.txt", b"hi")
    bad = a.write(tmp_path / "bad.anc")
    open_fails(bad, FormatError, "member 'README.txt' is outside a root folder")


def test_directory_entries_are_allowed(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    a.add_raw("demo/anemoi-metadata/", b"")
    good = a.write(tmp_path / "dirs.anc")
    with anemoi_ckpt.open(good) as ck:
        assert ck.verify(progress=False).ok


@pytest.mark.parametrize("size, fragment", [(0xFFFFFFFE, "past the end of the file"),
                                            (None, "past the zip directory")])
def test_member_size_in_directory_too_big(demo_file: Path, tmp_path: Path, size: int | None,
                                          fragment: str) -> None:
    """The size comes from the central directory; a huge one is refused before any read."""
    at = central_entries(demo_file)["demo/manifest.json"]
    with zipfile.ZipFile(demo_file) as zf:
        cd = zf.start_dir
    data_start, _ = section_span(demo_file, "manifest.json")
    size = size if size is not None else cd - data_start + 1
    bad = patched(demo_file, tmp_path / "bad.anc", {at + 20: struct.pack("<II", size, size)})
    open_fails(bad, FormatError, f"member 'demo/manifest.json' claims {size} bytes", fragment)


def test_members_overlap(demo_file: Path, tmp_path: Path) -> None:
    at = central_entries(demo_file)["demo/weights.safetensors"]
    _, size = section_span(demo_file, "weights.safetensors")
    bad = patched(demo_file, tmp_path / "bad.anc", {at + 20: struct.pack("<II", size + 64, size + 64)})
    open_fails(bad, FormatError, "members 'demo/weights.safetensors' and 'demo/graph.safetensors' overlap")


def test_local_header_offset_outside_the_file(demo_file: Path, tmp_path: Path) -> None:
    at = central_entries(demo_file)["demo/lineage.json"]
    bad = patched(demo_file, tmp_path / "bad.anc", {at + 42: struct.pack("<I", 0xFFFFFF00)})
    open_fails(bad, FormatError, "member 'demo/lineage.json': local header offset", "outside the file")


def test_bad_local_header(demo_file: Path, tmp_path: Path) -> None:
    at = local_header(demo_file, "demo/lineage.json")
    bad = patched(demo_file, tmp_path / "bad.anc", {at: b"PK\x09\x09"})
    open_fails(bad, FormatError, "member 'demo/lineage.json': bad local header signature")
    bad = patched(demo_file, tmp_path / "bad.anc", {at + 30: b"x"})
    open_fails(bad, FormatError, "member 'demo/lineage.json': local header names b'xemo/lineage.json'")


def test_local_extra_length_shifts_the_data(demo_file: Path, tmp_path: Path) -> None:
    """A damaged extra-field length moves where the data is read from: the digest catches it."""
    at = local_header(demo_file, "demo/lineage.json")
    (extra,) = struct.unpack_from("<H", demo_file.read_bytes(), at + 28)
    bad = patched(demo_file, tmp_path / "bad.anc", {at + 28: struct.pack("<H", extra - 1)})
    access_fails(bad, lambda ck: ck.lineage, IntegrityError, "digest mismatch", section="lineage.json")


# --- versions and sections ---------------------------------------------------------------------

def rewrite_manifest(src: Path, dst: Path, edit: Callable[[dict[str, Any]], Any],
                     extra: dict[str, bytes] | None = None) -> Path:
    """``src`` with members ``extra`` added, a consistent manifest, then ``edit`` applied to it."""
    a = Archive(src)
    for rel, data in (extra or {}).items():
        a[rel] = data
    a.refresh()
    m = a.manifest
    edit(m)
    a.manifest = m
    return a.write(dst, refresh=False)


def _with_manifest(demo_file: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], Any],
                   extra: dict[str, bytes] | None = None) -> Path:
    return rewrite_manifest(demo_file, tmp_path / "edited.anc", edit, extra)


def test_newer_major_version(demo_file: Path, tmp_path: Path) -> None:
    def newer(m: dict[str, Any]) -> None:
        m["format_version"] = "2.0"
        m["producer"]["version"] = "2.3.1"
        m["sections"] = "a format 2 manifest may look like anything"

    bad = _with_manifest(demo_file, tmp_path, newer)
    open_fails(bad, VersionError, "format 2.0 is newer than this anemoi-ckpt",
               "upgrade anemoi-ckpt to 2.3.1 or later")


def test_newer_major_version_without_producer(demo_file: Path, tmp_path: Path) -> None:
    bad = _with_manifest(demo_file, tmp_path, lambda m: m.update(format_version="3.1", producer=None))
    err = open_fails(bad, VersionError, "format 3.1 is newer", "(upgrade anemoi-ckpt)")
    assert "None" not in str(err)


def test_older_major_version(demo_file: Path, tmp_path: Path) -> None:
    bad = _with_manifest(demo_file, tmp_path, lambda m: m.update(format_version="0.9"))
    open_fails(bad, VersionError, "format 0.9 predates 1.0", "anemoi-ckpt convert")


@pytest.mark.parametrize("value", ["one.zero", None, [1, 0], ""])
def test_invalid_format_version(demo_file: Path, tmp_path: Path, value: Any) -> None:
    bad = _with_manifest(demo_file, tmp_path, lambda m: m.update(format_version=value))
    open_fails(bad, FormatError, "invalid format_version")


def test_newer_minor_version_with_unknown_optional_section(demo_file: Path, tmp_path: Path,
                                                           demo_sd: dict[str, torch.Tensor]) -> None:
    def newer(m: dict[str, Any]) -> None:
        m["format_version"] = "1.7"
        m["a_new_field"] = {"added": "in 1.7"}
        m["sections"].append({"path": "extras/fancy.msgpack", "role": "fancy-thing", "required": False,
                              "size": 5, "digest": sha(b"\x93\x01\x02\x03\x04"),
                              "media_type": "application/msgpack", "new_key": 1})

    good = _with_manifest(demo_file, tmp_path, newer, extra={"extras/fancy.msgpack": b"\x93\x01\x02\x03\x04"})
    with pytest.warns(UnknownSectionWarning) as record:
        ck = anemoi_ckpt.open(good)
    with ck:
        assert len(record) == 1
        msg = str(record[0].message)
        assert str(good) in msg and "extras/fancy.msgpack" in msg and "'fancy-thing'" in msg
        assert ck.format_version == "1.7"
        assert "extras/fancy.msgpack" not in [s.path for s in ck.sections()]
        assert ck.verify(progress=False).ok
        sd = ck.state_dict()
        assert sd.keys() == demo_sd.keys() and all(torch.equal(sd[k], demo_sd[k]) for k in sd)
        assert ck.metadata.description == "test file"


def test_unknown_required_section(demo_file: Path, tmp_path: Path) -> None:
    def newer(m: dict[str, Any]) -> None:
        m["format_version"] = "1.7"
        m["sections"].append({"path": "extras/needed.bin", "role": "quantisation-table",
                              "required": True, "size": 3, "digest": sha(b"abc"),
                              "media_type": "application/octet-stream"})

    bad = _with_manifest(demo_file, tmp_path, newer, extra={"extras/needed.bin": b"abc"})
    open_fails(bad, VersionError, "required, with role 'quantisation-table' unknown to anemoi-ckpt",
               "upgrade anemoi-ckpt", section="extras/needed.bin")


def test_section_listed_twice(demo_file: Path, tmp_path: Path) -> None:
    bad = _with_manifest(demo_file, tmp_path, lambda m: m["sections"].append(m["sections"][-1]))
    open_fails(bad, FormatError, "listed twice in the manifest", section="lineage.json")


def test_section_missing_from_the_archive(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    a.items = [(n, d) for n, d in a.items if not n.endswith("graph.safetensors")]
    bad = a.write(tmp_path / "bad.anc")
    open_fails(bad, FormatError, "missing from the archive", section="graph.safetensors")


@pytest.mark.parametrize("rel", ["metadata.json", "lineage.json", "weights.safetensors"])
def test_required_section_not_listed(demo_file: Path, tmp_path: Path, rel: str) -> None:
    bad = _with_manifest(demo_file, tmp_path,
                         lambda m: m.update(sections=[s for s in m["sections"] if s["path"] != rel]))
    open_fails(bad, FormatError, "required, but not listed in the manifest", section=rel)


@pytest.mark.parametrize("size", [1, 2**62])
def test_manifest_size_disagrees(demo_file: Path, tmp_path: Path, size: int) -> None:
    """A giant declared size is compared, never used to read or allocate."""
    def grow(m: dict[str, Any]) -> None:
        next(s for s in m["sections"] if s["path"] == "weights.safetensors")["size"] = size

    bad = _with_manifest(demo_file, tmp_path, grow)
    _, actual = section_span(demo_file, "weights.safetensors")
    t0 = time.perf_counter()
    open_fails(bad, IntegrityError, f"{actual} bytes, manifest says {size}", "the file is damaged",
               section="weights.safetensors")
    assert time.perf_counter() - t0 < 1.0


def test_manifest_larger_than_the_json_limit(demo_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_mod, "MAX_JSON", 1000)
    open_fails(demo_file, FormatError, "is too large for a JSON member", section="manifest.json")


def test_wrong_section_digest_in_manifest(demo_file: Path, tmp_path: Path) -> None:
    """A manifest that lies about a digest (consistently written, correct CRC) is damage too."""
    def lie(m: dict[str, Any]) -> None:
        next(s for s in m["sections"] if s["path"] == "graph.safetensors")["tensors"]["digests"]["data.x"] = "0" * 64

    bad = _with_manifest(demo_file, tmp_path, lie)
    report, damaged = damaged_sections(bad)
    assert [(s.path, s.damaged_tensors) for s in report.damaged] == [("graph.safetensors", ["data.x"])]


def test_bad_alias_in_manifest(demo_file: Path, tmp_path: Path) -> None:
    def alias(m: dict[str, Any]) -> None:
        next(s for s in m["sections"] if s["path"] == "weights.safetensors")["tensors"]["aliases"]["x"] = "nope"

    bad = _with_manifest(demo_file, tmp_path, alias)
    access_fails(bad, lambda ck: ck.tensors(), FormatError, "bad alias 'x' -> 'nope'",
                 section="weights.safetensors")


# --- JSON sections: encoding, syntax, schema ---------------------------------------------------

BAD_JSON = {
    "not UTF-8": (b'{"description": "caf\xe9"}', "not UTF-8"),
    "UTF-16": ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
    "invalid JSON": (b'{"description": ', "invalid JSON"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),
    "huge integer": (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON"),
}


@pytest.mark.parametrize("case", BAD_JSON)
def test_bad_manifest_json(demo_file: Path, tmp_path: Path, case: str) -> None:
    raw, fragment = BAD_JSON[case]
    a = Archive(demo_file)
    a.refresh()
    a["manifest.json"] = raw
    bad = a.write(tmp_path / "bad.anc", refresh=False)
    open_fails(bad, FormatError, fragment, section="manifest.json")


@pytest.mark.parametrize("rel, attr", JSON_SECTIONS[:3])
@pytest.mark.parametrize("case", BAD_JSON)
def test_bad_json_section(demo_file: Path, tmp_path: Path, rel: str, attr: str, case: str) -> None:
    raw, fragment = BAD_JSON[case]
    a = Archive(demo_file)
    a[rel] = raw
    bad = a.write(tmp_path / "bad.anc")  # digests match the bad bytes: only the content is wrong
    access_fails(bad, lambda ck: getattr(ck, attr), FormatError, fragment, section=rel)
    # verify decodes what it checks: matching digests over content no reader accepts is not "ok"
    report, damaged = damaged_sections(bad)
    assert list(damaged) == [rel] and fragment in damaged[rel].problem


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m.update(kind="weights-only"), "invalid kind"),
    (lambda m: m.pop("uuid"), "invalid uuid: Field required"),
    (lambda m: m["sections"][0].update(size=-1), "invalid sections.0.size"),
    (lambda m: m["sections"][0].update(size="big"), "invalid sections.0.size"),
    (lambda m: m.update(sections={"weights": 1}), "invalid sections"),
    (lambda m: m["sections"][3]["tensors"].update(digests=[1]), "invalid sections.3.tensors.digests"),
])
def test_manifest_fails_the_schema(demo_file: Path, tmp_path: Path, edit: Callable[[dict], Any],
                                   fragment: str) -> None:
    bad = _with_manifest(demo_file, tmp_path, edit)
    open_fails(bad, FormatError, fragment, section="manifest.json")


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m.update(format="zip-of-things"), "manifest.json does not describe an anemoi-ckpt file"),
    (lambda m: m.clear(), "manifest.json does not describe an anemoi-ckpt file"),
])
def test_manifest_of_something_else(demo_file: Path, tmp_path: Path, edit: Callable[[dict], Any],
                                    fragment: str) -> None:
    bad = _with_manifest(demo_file, tmp_path, edit)
    open_fails(bad, FormatError, fragment)


def test_manifest_not_an_object(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    a["manifest.json"] = b"[1, 2]"
    bad = a.write(tmp_path / "bad.anc", refresh=False)
    open_fails(bad, FormatError, "does not describe an anemoi-ckpt file")


@pytest.mark.parametrize("rel, attr, obj, fragment", [
    ("metadata.json", "metadata", {"tensor_roles": 5}, "invalid tensor_roles"),
    ("metadata.json", "metadata", [], "invalid (top level)"),
    ("metadata.json", "metadata", {"user": {"a\nb": 1}, "model": {"config": {}}}, "invalid model.builder"),
    ("lineage.json", "lineage", {"records": "x"}, "invalid records"),
    ("lineage.json", "lineage", {"records": [{"uuid": 1}]}, "invalid records.0.uuid"),
    ("anemoi-metadata/anemoi.json", "anemoi_metadata", [1, 2], "not a JSON object"),
])
def test_json_section_fails_the_schema(demo_file: Path, tmp_path: Path, rel: str, attr: str,
                                       obj: Any, fragment: str) -> None:
    a = Archive(demo_file)
    a[rel] = json.dumps(obj).encode()
    bad = a.write(tmp_path / "bad.anc")
    access_fails(bad, lambda ck: getattr(ck, attr), FormatError, fragment, section=rel)
    report, damaged = damaged_sections(bad)
    assert list(damaged) == [rel] and fragment in damaged[rel].problem


def _anemoi_with_arrays(demo_file: Path, tmp_path: Path, entry: Any) -> Path:
    a = Archive(demo_file)
    md = json.loads(a["anemoi-metadata/anemoi.json"])
    md["supporting_arrays_paths"]["data"]["latitudes"] = entry
    a["anemoi-metadata/anemoi.json"] = json.dumps(md).encode()
    return a.write(tmp_path / "bad.anc")


@pytest.mark.parametrize("change, fragment", [
    # np.dtype raises SyntaxError for this one; anemoi_meta.check_leaf may come to catch it itself
    ({"dtype": "(2,"}, ("supporting_arrays_paths: '(' was never closed", "unsupported dtype '(2,'")),
    ({"dtype": "i4,"}, "unsupported dtype"),  # a structured dtype
    ({"dtype": "O"}, "unsupported dtype"),
    ({"dtype": "M8[xyz]"}, "unsupported dtype"),
    ({"dtype": 5}, "unsupported dtype"),
    ({"shape": [2**70, 0]}, "needs 0 bytes"),
    ({"shape": [512] + [1] * 99}, "maximum supported dimension"),
    ({"shape": [-1]}, "shape must be a list"),
    ({"shape": [513]}, "needs 4104 bytes, member has 4096"),
    ({"path": "demo/weights.safetensors"}, "member has 19184"),
    ({"path": "demo/nowhere.numpy"}, "is not a section of this file"),
    ({"path": ["x"]}, "is not a section of this file"),
])
def test_hostile_supporting_array_entry(demo_file: Path, tmp_path: Path, change: dict[str, Any],
                                        fragment: str | tuple[str, ...]) -> None:
    entry = {"path": "demo/anemoi-metadata/data/latitudes.numpy", "shape": [512], "dtype": "float64"}
    bad = _anemoi_with_arrays(demo_file, tmp_path, {**entry, **change})
    err = access_fails(bad, lambda ck: ck.supporting_arrays, FormatError, "supporting",
                       section="anemoi-metadata/anemoi.json")
    alternatives = fragment if isinstance(fragment, tuple) else (fragment,)
    assert any(f in str(err) for f in alternatives), str(err)
    report, damaged = damaged_sections(bad)
    assert list(damaged) == ["anemoi-metadata/anemoi.json"]
    assert any(f in damaged["anemoi-metadata/anemoi.json"].problem for f in alternatives)


def test_deprecated_dtype_spelling_under_warnings_as_errors(demo_file: Path, tmp_path: Path) -> None:
    entry = {"path": "demo/anemoi-metadata/data/latitudes.numpy", "shape": [4096], "dtype": "a"}
    bad = _anemoi_with_arrays(demo_file, tmp_path, entry)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        access_fails(bad, lambda ck: ck.supporting_arrays, FormatError, "supporting",
                     section="anemoi-metadata/anemoi.json")


def test_empty_supporting_array_with_a_huge_shape(demo_file: Path, tmp_path: Path) -> None:
    """Zero bytes agree with a shape holding a 0, but numpy cannot build it: still our error."""
    a = Archive(demo_file)
    a["anemoi-metadata/empty.numpy"] = b""
    md = json.loads(a["anemoi-metadata/anemoi.json"])
    md["supporting_arrays_paths"]["empty"] = {"path": "demo/anemoi-metadata/empty.numpy",
                                              "shape": [2**62, 2**62, 0], "dtype": "float32"}
    a["anemoi-metadata/anemoi.json"] = json.dumps(md).encode()
    a.refresh()
    m = a.manifest
    m["sections"].insert(1, {"path": "anemoi-metadata/empty.numpy", "role": "supporting-array",
                             "required": False, "size": 0, "digest": sha(b""),
                             "media_type": "application/x-numpy-raw"})
    a.manifest = m
    bad = a.write(tmp_path / "bad.anc", refresh=False)
    access_fails(bad, lambda ck: ck.supporting_arrays, FormatError, "supporting_arrays_paths: ",
                 section="anemoi-metadata/anemoi.json")


@pytest.mark.parametrize("depth", [500, 5000])
def test_deeply_nested_supporting_arrays(demo_file: Path, tmp_path: Path, depth: int) -> None:
    a = Archive(demo_file)
    text = a["anemoi-metadata/anemoi.json"].decode()
    nested = '{"x": ' * depth + "{}" + "}" * depth
    key = '"supporting_arrays_paths":{'
    assert key in text
    a["anemoi-metadata/anemoi.json"] = text.replace(key, key + f'"deep": {nested},').encode()
    bad = a.write(tmp_path / "bad.anc")
    with anemoi_ckpt.open(bad) as ck:
        try:
            arrays = ck.supporting_arrays
        except AncError as e:
            check_error(e, bad, FormatError, section="anemoi-metadata/anemoi.json")
        else:
            assert arrays["data"]["longitudes"].shape == (512,)


def test_control_characters_from_the_file_are_escaped(demo_file: Path, tmp_path: Path) -> None:
    """A name holding a newline or a terminal escape cannot break the one-line error."""
    a = Archive(demo_file)
    a["metadata.json"] = json.dumps({"tensor_roles": {"a\n\x1b[2Jb": 5}}).encode()
    bad = a.write(tmp_path / "bad.anc")
    err = access_fails(bad, lambda ck: ck.metadata, FormatError, "invalid tensor_roles.a\\x0a\\x1b[2Jb",
                       section="metadata.json")
    assert "\x1b" not in str(err)
    bad = _rewrite_weights(demo_file, tmp_path, lambda h, p: ({**h, "n" * 10_000: [1]}, p))
    err = access_fails(bad, lambda ck: ck.tensors(), FormatError, "...", section="weights.safetensors")
    assert len(str(err)) < 2500


# --- not an .anc at all ------------------------------------------------------------------------

def test_torch_save_file(tmp_path: Path, demo_sd: dict[str, torch.Tensor]) -> None:
    pt = tmp_path / "model.pt"
    torch.save(demo_sd, pt)
    assert zipfile.is_zipfile(pt)
    open_fails(pt, FormatError, "no manifest.json in the archive", "not an .anc", "anemoi-ckpt convert")


@pytest.mark.parametrize("names", [["hello.txt"], ["a/b.txt", "a/c/d.txt"], ["x/metadata.json"],
                                   ["manifest.json"], ["a/b/manifest.json"]])
@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_without_a_manifest(tmp_path: Path, names: list[str], method: int) -> None:
    z = tmp_path / "plain.zip"
    with zipfile.ZipFile(z, "w", compression=method) as zf:
        for n in names:
            zf.writestr(n, "hello " * 100)
    open_fails(z, FormatError, "no manifest.json in the archive", "not an .anc")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.anc").write_bytes(b"")
    open_fails(tmp_path / "empty.anc", FormatError, "empty file")


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    junk = tmp_path / "junk.anc"
    junk.write_bytes(np.random.default_rng(seed).bytes(1 << 16))
    open_fails(junk, FormatError, "not a zip archive or truncated")


def test_random_bytes_ending_like_a_zip(tmp_path: Path) -> None:
    """An end record pointing into noise."""
    junk = tmp_path / "junk.anc"
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 3, 3, 200, 100, 0)
    junk.write_bytes(np.random.default_rng(0).bytes(1000) + end)
    open_fails(junk, FormatError, "not a zip archive or truncated")


def test_directory(tmp_path: Path) -> None:
    open_fails(tmp_path, FormatError, "is a directory, not an .anc file")


def test_missing_path(tmp_path: Path) -> None:
    open_fails(tmp_path / "nope.anc", FormatError, "no such file")


@pytest.mark.timeout(20)
def test_fifo_does_not_hang(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.anc"
    os.mkfifo(fifo)
    open_fails(fifo, FormatError, "is not a regular file")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_device_file() -> None:
    open_fails(Path("/dev/zero"), FormatError, "is not a regular file")


def test_unreadable_file(tmp_path: Path, demo_file: Path) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root reads anything")
    demo_file.chmod(0)
    try:
        open_fails(demo_file, FormatError, "cannot open (Permission denied)")
    finally:
        demo_file.chmod(0o644)


# --- hypothesis: any damage is either caught or provably harmless ------------------------------

class Small:
    """A small complete file and everything that can be read from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        self.expected = read_everything(path)[1]
        assert read_everything(path)[0].ok
        # Byte ranges that are structure rather than tensor or array payload: zip headers, the
        # safetensors headers, the JSON sections and the central directory.
        ranges = []
        with zipfile.ZipFile(path) as zf:
            infos, cd = zf.infolist(), zf.start_dir
        with anemoi_ckpt.open(path) as ck:
            members = {m.name: m for m in ck._members.values()}
            for info in infos:
                m = members[info.filename]
                ranges.append((info.header_offset, m.data_offset - 1))
                if m.name.endswith(".json"):
                    ranges.append((m.data_offset, m.data_offset + m.size - 1))
                elif m.name.endswith(".safetensors"):
                    (n,) = struct.unpack("<Q", self.data[m.data_offset:m.data_offset + 8])
                    ranges.append((m.data_offset, m.data_offset + 8 + n - 1))
        ranges.append((cd, len(self.data) - 1))
        self.structure = ranges


def read_everything(path: Path) -> tuple[Any, dict[str, Any]]:
    """verify(), then every tensor of every section, every JSON section and array (copied)."""
    with anemoi_ckpt.open(path) as ck:
        report = ck.verify(progress=False)
        out = {
            "manifest": ck.manifest.model_dump(),
            "tensors": {s: {k: v.clone() for k, v in ck.state_dict(s).items()} for s in ck.tensor_sections()},
            "metadata": ck.metadata.model_dump(),
            "lineage": ck.lineage.model_dump(),
            "anemoi": ck.anemoi_metadata,
            "arrays": _copy_arrays(ck.supporting_arrays),
        }
    return report, out


def _copy_arrays(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_arrays(v) if isinstance(v, dict) else np.array(v) for k, v in d.items()}


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys() or a["tensors"].keys() != b["tensors"].keys():
        return False
    for sec, ta in a["tensors"].items():
        tb = b["tensors"][sec]
        if ta.keys() != tb.keys() or not all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k])
                                             for k in ta):
            return False
    return (all(a[k] == b[k] for k in ("manifest", "metadata", "lineage", "anemoi"))
            and arrays_equal(a["arrays"], b["arrays"]))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    md, arrays = demo_anemoi_metadata()
    arrays = {"data": {k: v[:8] for k, v in arrays["data"].items()}}
    path = tmp_path_factory.mktemp("small") / "small.anc"
    anemoi_ckpt.save(path, demo_state_dict(channels=4, layers=1, grid_points=4, n_vars=3),
                     anemoi_metadata=md, supporting_arrays=arrays,
                     sections={"graph": demo_graph(grid_points=4, hidden=2)},
                     metadata={"description": "small", "user": {"k": [1, 2.5, None]}})
    return Small(path)


def check_damaged(small: Small, data: bytes) -> str:
    """The property: an AncError naming the file, or a report that is honest about the content."""
    fd, name = tempfile.mkstemp(suffix=".anc", dir=small.path.parent)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning is not an answer either
            try:
                report, content = read_everything(path)
            except AncError as e:
                check_error(e, path, type(e))
                return "error"
        if report.ok:
            assert same_content(content, small.expected), "verify() said ok, but the content differs"
            return "ok"
        assert report.damaged or not report.content_id_ok
        return "damaged"
    finally:
        path.unlink()


def _position(small: Small) -> st.SearchStrategy[int]:
    anywhere = st.integers(0, len(small.data) - 1)
    structure = st.sampled_from(small.structure).flatmap(lambda r: st.integers(r[0], r[1]))
    return st.one_of(anywhere, structure)


HYP = settings(max_examples=150, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@HYP
@given(data=st.data())
def test_random_byte_changes(small: Small, data: st.DataObject) -> None:
    edits = data.draw(st.lists(st.tuples(_position(small), st.integers(1, 255)), min_size=1, max_size=4))
    buf = bytearray(small.data)
    for pos, mask in edits:
        buf[pos] ^= mask
    if bytes(buf) != small.data:
        check_damaged(small, bytes(buf))


@HYP
@given(data=st.data())
def test_random_overwrites(small: Small, data: st.DataObject) -> None:
    """A run of arbitrary bytes written over the file (a bad sector, a partial overwrite)."""
    pos = data.draw(_position(small))
    junk = data.draw(st.binary(min_size=1, max_size=64))
    buf = bytearray(small.data)
    buf[pos:pos + len(junk)] = junk
    check_damaged(small, bytes(buf[:len(small.data) + 64]))


@HYP
@given(data=st.data())
def test_random_truncation(small: Small, data: st.DataObject) -> None:
    n = data.draw(st.one_of(st.integers(0, len(small.data) - 1), _position(small)))
    assert check_damaged(small, small.data[:n]) == "error"


@HYP
@given(data=st.data())
def test_random_cut_and_splice(small: Small, data: st.DataObject) -> None:
    """A block of the file removed or duplicated (every later offset shifts)."""
    a = data.draw(_position(small))
    b = data.draw(st.integers(a, min(len(small.data), a + 256)))
    dup = data.draw(st.booleans())
    spliced = small.data[:b] + small.data[a:] if dup else small.data[:a] + small.data[b:]
    if spliced != small.data:
        check_damaged(small, spliced)


def test_undamaged_small_file_is_ok(small: Small) -> None:
    assert check_damaged(small, small.data) == "ok"


# --- consistency rules between the manifest and what it describes -------------------------------

def test_duplicate_keys_in_manifest_json(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    raw = a["manifest.json"]
    a["manifest.json"] = raw[:-1] + b',"kind":"training"}'  # valid JSON, two values for "kind"
    bad = a.write(tmp_path / "dup.anc", refresh=False)
    open_fails(bad, FormatError, "duplicate JSON key 'kind'", section="manifest.json")


def test_newer_metadata_schema_is_refused(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    md = json.loads(a["metadata.json"])
    md["schema_version"] = "2.0"
    a["metadata.json"] = json.dumps(md).encode()
    bad = a.write(tmp_path / "schema2.anc")
    access_fails(bad, lambda ck: ck.metadata, VersionError, "schema_version 2.0 is newer",
                 "upgrade anemoi-ckpt", section="metadata.json")


def test_tensor_count_must_match_the_header(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    m = a.manifest
    a.section(m, "graph.safetensors")["tensors"]["count"] += 1
    a.manifest = m
    bad = a.write(tmp_path / "count.anc")
    access_fails(bad, lambda ck: ck.tensors("graph"), FormatError, "differ from the manifest",
                 section="graph.safetensors")


def test_verify_flags_members_the_manifest_does_not_list(demo_file: Path, tmp_path: Path) -> None:
    a = Archive(demo_file)
    a.add_raw(a.name("smuggled.bin"), b"extra data hidden in an intact-looking file")
    bad = a.write(tmp_path / "extra.anc")
    with anemoi_ckpt.open(bad) as ck:
        report = ck.verify()
    assert not report.ok and report.content_id_ok
    assert [(s.path, s.problem) for s in report.damaged] == [("smuggled.bin", "member not listed in the manifest")]
