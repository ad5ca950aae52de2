"""``anemoi-ckpt fetch``: by uuid through a catalogue whose locations are URLs on a loopback HTTP
server; resumable after a dropped connection, verified before the file is put in place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import anemoi_ckpt
from tests.conftest import run_cli
from tests.servers import CountingProxy, RangeServer


def weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"block.{i}.weight": torch.randn(256, 512, generator=g) for i in range(24)}  # 12 MB


@pytest.fixture
def site(tmp_path: Path):
    """A "remote site": a served folder holding a checkpoint, registered by URL in a catalogue."""
    served = tmp_path / "site"
    served.mkdir()
    anemoi_ckpt.save(served / "model.anc", weights(0), kind="training")
    with anemoi_ckpt.open(served / "model.anc") as ck:
        uuid, cid = ck.uuid, ck.content_id
    with RangeServer(served) as srv:
        proxy = CountingProxy(srv.port)
        db = tmp_path / "cat.db"
        out = run_cli("catalogue", "register", srv.url("model.anc", proxy.port), "--catalogue", str(db))
        assert out.returncode == 0, out.stderr
        yield srv, proxy, served, db, uuid, cid
        proxy.close()


def fetch(*args: str):
    return run_cli("fetch", *args)


def test_fetch_by_uuid_is_verified_and_byte_identical(site, tmp_path: Path) -> None:
    srv, proxy, served, db, uuid, cid = site
    dest = tmp_path / "scratch"
    dest.mkdir()
    proxy.reset()
    out = fetch(uuid[:8], "--catalogue", str(db), "-o", str(dest), "--json", "--register")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["uuid"] == uuid and report["content_id"] == cid and report["status"] == "downloaded"
    assert (dest / "model.anc").read_bytes() == (served / "model.anc").read_bytes()
    size = (served / "model.anc").stat().st_size
    # The body once, plus the manifest check before and the tail read on open.
    assert size <= proxy.bytes_down < size + (512 << 10), (proxy.bytes_down, size)
    assert not list(dest.glob(".*"))  # no partial file or sidecar left
    where = json.loads(run_cli("catalogue", "locate", uuid, "--catalogue", str(db), "--json").stdout)
    text = json.dumps(where)
    assert str(dest / "model.anc") in text  # --register added the local copy
    again = fetch(f"uuid:{uuid}", "--catalogue", str(db), "-o", str(dest))
    assert again.returncode == 0 and "already present" in again.stdout


def test_interrupted_fetch_resumes_where_it_stopped(site, tmp_path: Path) -> None:
    srv, proxy, served, db, uuid, _ = site
    dest = tmp_path / "scratch"
    dest.mkdir()
    size = (served / "model.anc").stat().st_size
    srv.cut_at(10 << 20)  # the connection drops when a response reaches byte 10 MB
    out = fetch(uuid, "--catalogue", str(db), "-o", str(dest))
    assert out.returncode == 1 and "transfer interrupted" in out.stderr and "resume" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    part = dest / ".model.anc.part"
    kept = part.stat().st_size
    assert 0 < kept < size and not (dest / "model.anc").exists()
    assert part.read_bytes() == (served / "model.anc").read_bytes()[:kept]  # a prefix, nothing else
    srv.cut_at(None)
    proxy.reset()
    out = fetch(uuid, "--catalogue", str(db), "-o", str(dest), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["resumed_from"] == kept and report["transferred"] == size - kept
    assert proxy.bytes_down < size - kept + (512 << 10)  # the rest, not the whole file again
    assert (dest / "model.anc").read_bytes() == (served / "model.anc").read_bytes()


def test_a_location_holding_other_bytes_is_refused(site, tmp_path: Path) -> None:
    srv, _, served, db, uuid, _ = site
    dest = tmp_path / "scratch"
    dest.mkdir()
    shutil.copy(served / "model.anc", tmp_path / "original.anc")
    anemoi_ckpt.save(served / "model.anc", weights(1), kind="training")  # replaced at the location
    out = fetch(uuid, "--catalogue", str(db), "-o", str(dest))
    assert out.returncode == 1 and "expected" in out.stderr and "Traceback" not in out.stderr
    assert list(dest.iterdir()) == []
    # Same manifest, one damaged tensor byte: caught by the verification before the rename.
    raw = bytearray((tmp_path / "original.anc").read_bytes())
    with anemoi_ckpt.open(tmp_path / "original.anc") as ck:
        raw[ck.tensors()._offsets["block.3.weight"] + 8] ^= 0x40
    (served / "model.anc").write_bytes(bytes(raw))
    out = fetch(uuid, "--catalogue", str(db), "-o", str(dest))
    assert out.returncode == 1 and "does not verify" in out.stderr, out.stderr
    assert list(dest.iterdir()) == []  # neither the target nor the bad partial download


def test_falls_back_to_the_next_location(site, tmp_path: Path) -> None:
    srv, _, served, db, uuid, _ = site
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(served / "model.anc", mirror / "model.anc")
    assert run_cli("catalogue", "register", str(mirror / "model.anc"), "--catalogue", str(db)).returncode == 0
    (mirror / "model.anc").unlink()  # the local copy is gone; the URL still answers
    dest = tmp_path / "scratch"
    dest.mkdir()
    out = fetch(uuid, "--catalogue", str(db), "-o", str(dest), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["source"].startswith("http://")


def test_unknown_uuid_and_existing_other_file(site, tmp_path: Path) -> None:
    srv, _, served, db, uuid, _ = site
    out = fetch(uuid, "--catalogue", str(db), "-o", str(tmp_path / "no" / "such" / "m.anc"))
    assert out.returncode == 2 and "its folder does not exist" in out.stderr
    out = fetch(uuid, "--catalogue", str(db), "-o", f"{tmp_path / 'new'}/")
    assert out.returncode == 0 and (tmp_path / "new" / "model.anc").is_file(), out.stderr
    out = fetch("0123456789abcdef", "--catalogue", str(db), "-o", str(tmp_path))
    assert out.returncode != 0 and "no checkpoint or lineage record with uuid" in out.stderr and "Traceback" not in out.stderr
    other = tmp_path / "model.anc"
    anemoi_ckpt.save(other, {"w": torch.zeros(2)})
    before = other.read_bytes()
    out = fetch(uuid, "--catalogue", str(db), "-o", str(tmp_path))
    assert out.returncode != 0 and "exists and is not the checkpoint" in out.stderr
    assert other.read_bytes() == before  # never overwritten
