"""Compressed tensor sections (format 1.2): the same content id and tensors as uncompressed,
transparent reads (local, remote by ranges), conversions both ways, the commands that read
tensors, and one clean error line for every kind of damage."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import anemoi_ckpt
from anemoi_ckpt import FormatError, IntegrityError
from anemoi_ckpt.container import codec
from anemoi_ckpt.container.codec import Compression
from tests.conftest import one_error_line, run_cli, section_span
from tests.servers import CountingProxy, RangeServer
from tests.test_damaged import Archive

ZRel = "weights.safetensors-zstd"


def weights(seed: int = 0, dtype: torch.dtype = torch.float32, n: int = 1 << 20) -> dict[str, torch.Tensor]:
    """Random-normal-ish weights like a trained layer's (std 0.02), a bias, an int buffer and a tie."""
    g = torch.Generator().manual_seed(seed)
    out = {"layer.weight": (torch.randn(n // 256, 256, generator=g) * 0.02).to(dtype),
           "layer.bias": torch.randn(1000, generator=g).to(dtype),
           "steps": torch.arange(300, dtype=torch.int64),
           "empty": torch.empty(0, 4), "scalar": torch.tensor(1.5, dtype=torch.float64)}
    out["tied"] = out["layer.weight"]
    return out


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit for bit: dtype, shape and every byte (NaN payloads and -0.0 included)."""
    def raw(t: torch.Tensor) -> bytes:
        return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                    and raw(a[k]) == raw(b[k]) for k in a)


# --- the codec ---------------------------------------------------------------------------------

def test_byte_planes_worked_example() -> None:
    # The example of docs/format.md: bf16 1.0 (0x3F80) and -2.0 (0xC000), little-endian.
    chunk = np.array([1.0, -2.0], dtype=np.float32).view(np.uint32) >> 16
    raw = chunk.astype(np.uint16).tobytes()
    assert raw == bytes([0x80, 0x3F, 0x00, 0xC0])
    planes = codec.to_planes(raw, 2).tobytes()
    assert planes == bytes([0x80, 0x00, 0x3F, 0xC0])  # low bytes, then high (sign+exponent) bytes
    out = bytearray(4)
    codec.from_planes(planes, 2, out)
    assert bytes(out) == raw


def test_parse_compress() -> None:
    assert codec.parse_compress("none") is None and codec.parse_compress(None) is None
    assert codec.parse_compress("zstd") == Compression(1)
    assert codec.parse_compress("zstd:19") == Compression(19)
    for bad in ("zstd:0", "zstd:23", "zstd:x", "lz4", "zstd:-1"):
        with pytest.raises(ValueError):
            codec.parse_compress(bad)
    with pytest.raises(ValueError):
        codec.parse_compress(Compression(3, chunk_size=1000))


# --- round trips, ids, ratios ------------------------------------------------------------------

@pytest.mark.parametrize("dtype,at_most", [(torch.bfloat16, 0.75), (torch.float32, 0.90)])
def test_same_content_id_tensors_and_smaller(tmp_path: Path, dtype: torch.dtype, at_most: float) -> None:
    sd = weights(0, dtype)
    plain = anemoi_ckpt.save(tmp_path / "plain.anc", sd, durable=False)
    packed = anemoi_ckpt.save(tmp_path / "packed.anc", sd, durable=False, compress="zstd")
    with anemoi_ckpt.open(plain) as a, anemoi_ckpt.open(packed) as b:
        assert a.content_id == b.content_id
        assert a.section("weights.safetensors").tensors == b.section(ZRel).tensors  # same digests
        assert b.section(ZRel).digest == a.section("weights.safetensors").digest
        got = b.state_dict()
        assert same_tensors(got, sd)
        assert got["tied"] is got["layer.weight"]  # an alias is the same tensor object
        assert b.tensors().aliases == {"tied": "layer.weight"}
        assert b.verify().ok
        stored = b.section(ZRel).size / a.section("weights.safetensors").size
    # random-normal weights: >= 25% smaller in bf16, >= 10% in fp32 (measured 0.71 and 0.86)
    assert stored <= at_most, stored


def test_compressed_member_is_a_stored_aligned_zip_member(tmp_path: Path) -> None:
    path = anemoi_ckpt.save(tmp_path / "z.anc", weights(1, n=1 << 16), durable=False, compress="zstd")
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(ZRel))
        assert info.compress_type == zipfile.ZIP_STORED
        assert zf.testzip() is None  # the CRC-32 is over the stored (compressed) bytes
        data = zf.read(info)
    offset, size = section_span(path, ZRel)
    assert offset % 64 == 0 and size == len(data)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    begin, end = header["layer.weight"]["data_offsets"]
    assert end - begin == (1 << 16) * 4  # logical offsets, not stored ones
    assert end <= sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
                      if k != "__metadata__")
    with anemoi_ckpt.open(path) as ck:
        enc = ck.section(ZRel).encoding
        assert enc.size == 8 + n + sum(t.numel() * t.element_size() for k, t in weights(1, n=1 << 16).items()
                                       if k != "tied")
        assert sum(enc.frames) == size - 8 - n


def test_multi_frame_tensors_and_every_level(tmp_path: Path) -> None:
    sd = weights(2, torch.float16, n=20_000)  # 40,000 bytes: ten 4 KiB frames, the last shorter
    for level in (1, 22):
        path = tmp_path / f"l{level}.anc"
        with anemoi_ckpt.Writer(path, compress=Compression(level, 4096), durable=False) as w:
            for k, t in sd.items():
                w.add(k, t)
        with anemoi_ckpt.open(path) as ck:
            assert ck.section(ZRel).encoding.level == level
            assert len(ck.tensors().frames["layer.weight"].sizes) == 10
            assert same_tensors(ck.state_dict(), sd) and ck.verify().ok


def test_streaming_through_a_section_holds_one_tensor(tmp_path: Path) -> None:
    """Decoded tensors are cached weakly: reading a section tensor by tensor (convert, export,
    verify) keeps only the tensor in use; an alias is the same object while its target lives."""
    import gc
    import weakref

    sd = {f"t{i}": torch.full((1000,), float(i)) for i in range(20)}
    path = anemoi_ckpt.save(tmp_path / "z.anc", sd, durable=False, compress="zstd")
    with anemoi_ckpt.open(path) as ck:
        mapping = ck.tensors()
        refs = []
        for name in mapping:
            t = mapping[name]
            assert torch.equal(t, sd[name])
            refs.append(weakref.ref(t))
            del t
        gc.collect()
        assert sum(r() is not None for r in refs) == 0  # none kept alive by the reader
        a = mapping["t3"]
        assert mapping["t3"] is a  # while held, the same object


def _mapped(ck: anemoi_ckpt.Checkpoint, t: torch.Tensor) -> bool:
    base = np.frombuffer(ck._mm, dtype=np.uint8).ctypes.data
    return base <= t.data_ptr() < base + ck.size


def test_legacy_to_zstd_to_none_same_id_and_mappable(tmp_path: Path) -> None:
    sd = weights(3, torch.bfloat16, n=1 << 16)
    torch.save({"state_dict": sd}, tmp_path / "legacy.ckpt")  # a pickle: read without running it
    z = anemoi_ckpt.convert(tmp_path / "legacy.ckpt", tmp_path / "z.anc", compress="zstd:5",
                            keep_layout=True, durable=False)
    back = anemoi_ckpt.convert(tmp_path / "z.anc", tmp_path / "none.anc", compress="none", durable=False)
    plain = anemoi_ckpt.convert(tmp_path / "legacy.ckpt", tmp_path / "plain.anc", keep_layout=True,
                                durable=False)
    assert z.content_id == back.content_id == plain.content_id
    assert (z.compression, back.compression) == ("zstd:5", "none")
    assert z.stored_bytes < back.stored_bytes
    again = anemoi_ckpt.convert(tmp_path / "z.anc", tmp_path / "kept.anc", durable=False)
    assert again.compression == "zstd:5" and again.copied  # as the source: frames copied as bytes
    with anemoi_ckpt.open(tmp_path / "z.anc") as zc, anemoi_ckpt.open(tmp_path / "none.anc") as nc:
        assert (zc.compression, nc.compression) == ("zstd:5", "none")
        assert "weights.safetensors" in [s.path for s in nc.sections()]
        assert nc.section("weights.safetensors").encoding is None
        a, b = zc.state_dict(), nc.state_dict()
        assert same_tensors(a, b)
        assert all(_mapped(nc, t) for t in b.values() if t.numel())  # views of the map again
        assert not any(_mapped(zc, t) for t in a.values() if t.numel())  # decoded copies
    with anemoi_ckpt.open(tmp_path / "kept.anc") as kc:
        assert kc.section(ZRel).encoding.level == 5


def test_cli_convert_both_ways(tmp_path: Path) -> None:
    src = anemoi_ckpt.save(tmp_path / "a.anc", weights(4, n=1 << 14), durable=False)
    out = run_cli("convert", str(src), str(tmp_path / "z.anc"), "--compress", "zstd:3", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["compression"] == "zstd:3" and rep["stored_bytes"] == (tmp_path / "z.anc").stat().st_size
    out = run_cli("convert", str(tmp_path / "z.anc"), str(tmp_path / "n.anc"), "--compress", "none")
    assert out.returncode == 0, out.stderr
    bad = run_cli("convert", str(src), str(tmp_path / "x.anc"), "--compress", "zstd:30")
    assert bad.returncode == 2 and "zstd level must be 1..22" in bad.stderr
    assert not (tmp_path / "x.anc").exists()
    with anemoi_ckpt.open(src) as a, anemoi_ckpt.open(tmp_path / "n.anc") as n:
        assert a.content_id == n.content_id


# --- the commands on compressed files ----------------------------------------------------------

def test_inspect_verify_diff_on_compressed(tmp_path: Path) -> None:
    a = anemoi_ckpt.save(tmp_path / "a.anc", weights(5, n=1 << 14), durable=False, compress="zstd")
    changed = weights(5, n=1 << 14)
    changed["layer.bias"] = changed["layer.bias"] + 1
    b = anemoi_ckpt.save(tmp_path / "b.anc", changed, durable=False)
    out = run_cli("inspect", str(a), "--json")
    assert out.returncode == 0 and ZRel in out.stdout
    out = run_cli("verify", str(a), "--json")
    rep = json.loads(out.stdout)
    assert out.returncode == 0 and rep["ok"] and rep["sections"][0]["path"] == ZRel
    out = run_cli("diff", str(a), str(b), "--json")
    assert out.returncode in (0, 1), out.stderr
    rep = json.loads(out.stdout)
    assert [c["name"] for s in rep["sections"] for c in s["changes"]] == ["layer.bias"]
    report = anemoi_ckpt.diff(a, b)
    assert [c.name for s in report.sections for c in s.changes] == ["layer.bias"]
    assert report.sections[0].changes[0].stats is not None  # values compared, decoded


def test_merge_delta_onto_compressed_base(tmp_path: Path) -> None:
    from anemoi_ckpt.adapters import merge

    sd = weights(6, n=1 << 14)
    base = anemoi_ckpt.save(tmp_path / "base.anc", sd, durable=False, compress="zstd")
    repl = {"layer.bias": torch.full((1000,), 0.5)}
    delta = tmp_path / "delta.anc"
    with anemoi_ckpt.open(base) as bk:
        anemoi_ckpt.save(delta, repl, kind="delta", parents=[bk], compress="zstd", durable=False,
                         metadata={"adapter": {"name": "d", "base_content_id": bk.content_id,
                                               "base_uuid": bk.uuid}})
    report = merge(base, [delta], tmp_path / "merged.anc", durable=False)
    with anemoi_ckpt.open(report.path) as ck:
        got = ck.state_dict()
        assert torch.equal(got["layer.bias"], repl["layer.bias"])
        # every unchanged tensor, small ones included (a base merge opens is read by pread
        # where it can: never the stored frames of a compressed one)
        assert all(torch.equal(got[k], sd[k]) for k in sd if k != "layer.bias")
        assert ck.tensors().aliases == {"tied": "layer.weight"}  # the tie survives decoding
        assert ck.verify().ok


def test_metadata_edit_keeps_a_file_compressed(tmp_path: Path) -> None:
    """``metadata --set`` copies the tensor sections as they are stored: still compressed, the
    frames copied as bytes, the same content id."""
    src = anemoi_ckpt.save(tmp_path / "z.anc", weights(4, torch.bfloat16, n=1 << 14), durable=False,
                           compress="zstd", anemoi_metadata={"config": {"lr": 1}})
    out = run_cli("metadata", str(src), "--set", "config.lr=2", "-o", str(tmp_path / "m.anc"))
    assert out.returncode == 0, out.stderr
    with anemoi_ckpt.open(src) as a, anemoi_ckpt.open(tmp_path / "m.anc") as b:
        assert (a.compression, b.compression) == ("zstd:1", "zstd:1")
        assert b.content_id == a.content_id and b.anemoi_metadata["config"]["lr"] == 2
        rel = b.tensor_section_rel("weights")
        assert b.read_bytes(b._members[rel].data_offset, b._members[rel].size) == \
            a.read_bytes(a._members[rel].data_offset, a._members[rel].size)
        assert b.verify().ok


# --- remote reads by byte range ----------------------------------------------------------------

def test_remote_reads_fetch_only_the_asked_tensors_frames(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(7)
    sd = {f"block.{i}": (torch.randn(256, 256, generator=g) * 0.02).to(torch.bfloat16) for i in range(40)}
    path = anemoi_ckpt.save(tmp_path / "z.anc", sd, durable=False, compress="zstd")
    with anemoi_ckpt.open(path) as ck:
        frames = ck.tensors().frames
        stored = frames["block.17"].stored
        assert stored < 256 * 256 * 2 * 0.8
    with RangeServer(tmp_path) as srv:
        proxy = CountingProxy(srv.port)
        try:
            with anemoi_ckpt.open(srv.url("z.anc", proxy.port)) as ck:
                mapping = ck.tensors()
                opened = proxy.bytes_down
                assert torch.equal(mapping["block.17"], sd["block.17"])
                body = proxy.bytes_down - opened
                assert ck.verify().ok
        finally:
            proxy.close()
    # that tensor's frames and HTTP headers: not the logical bytes, not a neighbour's frames
    assert stored <= body <= stored + 4096, (body, stored)


# --- damage: one line, exit 1 ------------------------------------------------------------------

def damage_lines(out, *fragments: str) -> list[str]:
    """``verify`` on a damaged file: exit 1, no traceback, one error line per damaged section
    (the first holding ``fragments``), and the content id line when the weights cannot be hashed."""
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and 1 <= len(lines) <= 2, out.stderr
    assert all(line.startswith("anemoi-ckpt: error: ") for line in lines), out.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    return Path(anemoi_ckpt.save(tmp_path / "packed.anc", weights(8, n=1 << 14), durable=False,
                                 compress="zstd"))


def test_tampered_compressed_byte(packed: Path, tmp_path: Path) -> None:
    offset, size = section_span(packed, ZRel)
    data = bytearray(packed.read_bytes())
    data[offset + size - 100] ^= 0x5A  # inside the last frames (the tensors, not the header)
    bad = tmp_path / "bad.anc"
    bad.write_bytes(bytes(data))
    out = run_cli("verify", str(bad))
    damage_lines(out, "bad.anc", ZRel, "layer.weight")
    with anemoi_ckpt.open(bad) as ck:
        rep = ck.verify()
        assert not rep.ok and rep.sections[0].problem and rep.sections[0].path == ZRel
        assert rep.sections[0].damaged_tensors == ["layer.weight"]
        with pytest.raises(IntegrityError, match="layer.weight.*frame"):  # the frame checksum
            ck.state_dict()
    # a command that reads the tensors: one line naming the tensor and the frame, exit 1
    out = run_cli("export", str(bad), str(tmp_path / "out.safetensors"))
    one_error_line(out, "bad.anc", ZRel, "tensor 'layer.weight': frame")
    assert not (tmp_path / "out.safetensors").exists()


def test_truncated_member(packed: Path, tmp_path: Path) -> None:
    arc = Archive(packed)
    arc[ZRel] = arc[ZRel][:-50]
    bad = arc.write(tmp_path / "cut.anc", refresh=False)
    out = run_cli("verify", str(bad))
    one_error_line(out, "cut.anc", ZRel)  # the size check when opening: one line
    bad2 = Archive(packed)
    bad2[ZRel] = bad2[ZRel][:-50]
    bad2 = bad2.write(tmp_path / "cut2.anc")  # the manifest's size follows: the index no longer tiles
    with pytest.raises(FormatError, match="frame index: frames hold"):
        with anemoi_ckpt.open(bad2) as ck:
            ck.tensors()
    damage_lines(run_cli("verify", str(bad2)), "frame index")


@pytest.mark.parametrize("lie", ["frame-count", "frame-sizes", "huge-frame", "size", "chunk", "codec"])
def test_lying_index(packed: Path, tmp_path: Path, lie: str) -> None:
    arc = Archive(packed)
    m = arc.manifest
    enc = arc.section(m, ZRel)["encoding"]
    if lie == "frame-count":
        enc["frames"].append(1)
    elif lie == "frame-sizes":  # same total, other split: frames decode to the wrong lengths
        enc["frames"][0] -= 1
        enc["frames"][1] += 1
    elif lie == "huge-frame":
        enc["frames"][0] += 1 << 40
    elif lie == "size":
        enc["size"] += 8
    elif lie == "chunk":
        enc["chunk_size"] = 1 << 40
    else:
        enc["codec"] = "brotli"
    arc.manifest = m
    bad = arc.write(tmp_path / f"{lie}.anc")
    out = run_cli("verify", str(bad))
    if lie in ("codec", "chunk"):  # refused when the file is opened
        line = one_error_line(out, f"{lie}.anc", ZRel)
        assert ("upgrade anemoi-ckpt" in line) == (lie == "codec")
    else:
        line = damage_lines(out, f"{lie}.anc")[0]
    assert len(line) < 400
