"""Reading ``.anc`` files from URLs against a real HTTP server on loopback, bytes counted on the
wire by a proxy: inspect and lineage fetch a few kilobytes, a partial load about the bytes of the
tensors asked for, and every command takes a URL."""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import anemoi_ckpt
from anemoi_ckpt import AncError, FormatError
from anemoi_ckpt.container.rangefile import RangeFile
from tests.conftest import run_cli
from tests.servers import CountingProxy, RangeServer

N_TENSORS = 120


def big_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Mixed sizes (16 KB to 512 KB) so a byte count cannot come out right by accident.
    return {f"processor.{i}.weight": torch.randn(32 * (1 + i % 16), 128, generator=g)
            for i in range(N_TENSORS)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RangeServer, CountingProxy, Path]]:
    root = tmp_path_factory.mktemp("served")
    anemoi_ckpt.save(root / "base.anc", big_weights(0), kind="training",
                     metadata={"description": "served base"}, parameters={"seed": 0})
    anemoi_ckpt.save(root / "child.anc", big_weights(1), parents=[root / "base.anc"],
                     operation="fine-tune", parameters={"lr": 1e-4})
    with RangeServer(root) as srv:
        proxy = CountingProxy(srv.port)
        yield srv, proxy, root
        proxy.close()


def url(served: tuple[RangeServer, CountingProxy, Path], name: str) -> str:
    srv, proxy, _ = served
    return srv.url(name, proxy.port)


def test_open_reads_only_the_directory_and_manifest(served) -> None:
    _, proxy, root = served
    size = (root / "child.anc").stat().st_size
    proxy.reset()
    with anemoi_ckpt.open(url(served, "child.anc")) as ck:
        assert ck.size == size and ck.kind == "inference"
        block = ck.lineage
        assert [r.operation for r in block.records] == ["fine-tune", "create"]
        assert ck.metadata.description is None
        names = list(ck.tensors())  # the safetensors header, not the tensors
        assert len(names) == N_TENSORS
        fetched = ck.remote.bytes_fetched
    assert size > 15 << 20
    # What crossed the wire: the file's tail (directory and manifest), the local headers and the
    # tensor header, plus HTTP headers. A few hundred kilobytes at most, whatever the file size.
    assert proxy.bytes_down < 256 << 10, proxy.bytes_down
    assert fetched <= proxy.bytes_down


def test_partial_load_transfers_about_the_tensors_asked_for(served) -> None:
    _, proxy, root = served
    with anemoi_ckpt.open(root / "child.anc") as local:
        expected = {n: t.clone() for n, t in local.tensors().items()}
    names = sorted(expected)
    random.Random(3).shuffle(names)
    chosen = names[:N_TENSORS // 10]
    wanted = sum(expected[n].numel() * expected[n].element_size() for n in chosen)
    proxy.reset()
    with anemoi_ckpt.open(url(served, "child.anc")) as ck:
        opened = proxy.bytes_down
        for n in chosen:
            assert torch.equal(ck.tensors()[n], expected[n]), n
    body = proxy.bytes_down - opened
    assert wanted <= body <= wanted * 1.02 + 64 * 1024, (body, wanted)


def test_read_ahead_of_named_tensors_batches_requests(served) -> None:
    _, proxy, root = served
    with anemoi_ckpt.open(root / "child.anc") as local:
        expected = {n: t.clone() for n, t in local.tensors().items()}
        order = sorted(expected, key=local.tensors()._offsets.__getitem__)
    # A run of neighbours (in file order) and two strays: three spans to fetch.
    chosen = order[10:30] + [order[50], order[90]]
    wanted = sum(expected[n].numel() * expected[n].element_size() for n in chosen)
    with anemoi_ckpt.open(url(served, "child.anc")) as ck:
        proxy.reset()
        before = ck.remote.requests
        ck.read_ahead(names=chosen)
        fetched = ck.remote.requests - before
        for n in chosen:
            assert torch.equal(ck.tensors()[n], expected[n])
        assert ck.remote.requests - before == fetched  # nothing more after the batch
        with pytest.raises(AncError, match="no tensor 'nope'"):
            ck.read_ahead(names=["nope"])
    assert fetched <= 3 + 1  # neighbours shared requests (a run over 8 MB takes two)
    assert wanted <= proxy.bytes_down <= wanted * 1.05 + (64 << 10)


def test_load_into_a_module_from_a_url(served) -> None:
    _, _, root = served
    module = torch.nn.Module()
    for name, t in big_weights(1).items():
        module.register_buffer(name.replace(".", "_"), torch.zeros_like(t))
    renamed = root / "module.anc"
    anemoi_ckpt.save(renamed, {n.replace(".", "_"): t for n, t in big_weights(1).items()})
    with anemoi_ckpt.open(url(served, "module.anc")) as ck:
        ck.load_into(module)
        assert ck.remote.requests < N_TENSORS // 4  # batched, not one request per tensor
    for name, t in big_weights(1).items():
        assert torch.equal(getattr(module, name.replace(".", "_")), t)


def test_read_ahead_fetches_a_section_in_one_transfer_and_tensors_match(served) -> None:
    _, proxy, root = served
    proxy.reset()
    with anemoi_ckpt.open(url(served, "base.anc")) as ck, anemoi_ckpt.open(root / "base.anc") as local:
        ck.read_ahead()
        requests = ck.remote.requests
        sd = ck.state_dict()
        assert ck.remote.requests == requests  # every tensor came from the fetched section
        for n, t in local.tensors().items():
            assert torch.equal(sd[n], t)
        sd[next(iter(sd))].add_(1)  # writable, and the file is untouched (a private copy)
    assert proxy.bytes_down < (root / "base.anc").stat().st_size * 1.01 + (256 << 10)


def test_verify_over_http_detects_damage(served, tmp_path: Path) -> None:
    srv, proxy, root = served
    with anemoi_ckpt.open(url(served, "base.anc")) as ck:
        assert ck.verify(progress=False).ok
        offset = ck.tensors()._offsets["processor.0.weight"] + 100
    damaged = root / "damaged.anc"
    data = bytearray((root / "base.anc").read_bytes())
    data[offset] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with anemoi_ckpt.open(url(served, "damaged.anc")) as ck:
        report = ck.verify(progress=False)
    assert not report.ok and report.damaged[0].damaged_tensors == ["processor.0.weight"]
    out = run_cli("verify", url(served, "damaged.anc"))
    assert out.returncode == 1 and "DAMAGED" in out.stdout and "Traceback" not in out.stderr


def test_cli_commands_take_urls(served, tmp_path: Path) -> None:
    _, _, root = served
    remote, local = url(served, "child.anc"), str(root / "child.anc")
    a = json.loads(run_cli("inspect", remote, "--json").stdout)
    b = json.loads(run_cli("inspect", local, "--json").stdout)
    assert a.pop("path") == remote and b.pop("path") == local
    assert a == b
    out = run_cli("lineage", remote)
    assert out.returncode == 0 and "fine-tune" in out.stdout and "create" in out.stdout
    out = run_cli("diff", url(served, "base.anc"), local, "--json")
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    assert not report["identical"] and report["lineage"] != "A and B are the same file"
    assert report["sections"][0]["counts"]["value"] == N_TENSORS, out.stdout
    out = run_cli("convert", remote, str(tmp_path / "copy.anc"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["source"] == remote
    with anemoi_ckpt.open(tmp_path / "copy.anc") as ck, anemoi_ckpt.open(local) as orig:
        assert ck.content_id == orig.content_id
        assert ck.lineage.records[1].uuid == orig.uuid  # the URL's file is the parent


def test_convert_and_scan_a_pickle_from_a_url(tmp_path: Path) -> None:
    from tests.conftest import FIXTURES

    legacy = next(p for p in sorted(FIXTURES.rglob("*.ckpt")))
    with RangeServer(legacy.parent) as srv:
        u = srv.url(legacy.name)
        out = run_cli("scan", u, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["path"] == u
        out = run_cli("convert", u, str(tmp_path / "conv.anc"), "--json")
        assert out.returncode == 0, out.stderr
    ref = run_cli("convert", str(legacy), str(tmp_path / "ref.anc"), "--json")
    with anemoi_ckpt.open(tmp_path / "conv.anc") as a, anemoi_ckpt.open(tmp_path / "ref.anc") as b:
        assert a.content_id == b.content_id, ref.stderr


def test_file_url_is_a_path(served, tmp_path: Path) -> None:
    _, _, root = served
    with anemoi_ckpt.open((root / "base.anc").as_uri()) as ck:
        assert ck.remote is None and ck._mm is not None  # memory-mapped like a path
        assert ck.verify(progress=False).ok
    # Taken literally, as fsspec takes it: "+", "#" and "%" are part of the name.
    odd = tmp_path / "a+b#1%2B.anc"
    anemoi_ckpt.save(odd, {"w": torch.ones(3)})
    with anemoi_ckpt.open(f"file://{odd}") as ck:
        assert ck.path == f"file://{odd}" and torch.equal(ck.tensors()["w"], torch.ones(3))
    from anemoi_ckpt.remote.download import download

    report = download(str(odd), tmp_path / "copy.anc")  # read by range through fsspec's file://
    assert (tmp_path / "copy.anc").read_bytes() == odd.read_bytes() and report.transferred == odd.stat().st_size
    out = run_cli("inspect", "file://relative/x.anc")
    assert out.returncode == 1 and "file:///absolute/path" in out.stderr


def test_errors_are_one_line(served, tmp_path: Path) -> None:
    srv, _, root = served
    out = run_cli("inspect", srv.url("missing.anc"))
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "missing.anc" in out.stderr
    out = run_cli("inspect", "nosuchproto://bucket/x.anc")
    assert out.returncode == 1 and "unknown protocol nosuchproto://" in out.stderr
    out = run_cli("convert", str(root / "base.anc"), "s3://bucket/out.anc")
    assert out.returncode == 1 and "cannot write to a URL" in out.stderr
    srv.honour_ranges(False)  # a server that answers every request with the whole file
    try:
        with pytest.raises(AncError, match="ignored the range request"):
            anemoi_ckpt.open(srv.url("base.anc"))
        out = run_cli("inspect", srv.url("base.anc"))
        assert out.returncode == 1 and "ignored the range request" in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        srv.honour_ranges(True)
    with RangeServer(tmp_path) as down:
        port = down.port
    out = run_cli("inspect", f"http://127.0.0.1:{port}/base.anc")  # nothing listens any more
    assert out.returncode == 1 and "cannot open" in out.stderr and "Traceback" not in out.stderr


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges=st.lists(st.tuples(st.integers(0, 17 << 20), st.integers(0, 3 << 20)), min_size=1, max_size=8))
def test_range_reads_equal_the_file(served, ranges) -> None:
    _, _, root = served
    data = (root / "base.anc").read_bytes()
    rf = RangeFile(url(served, "base.anc"))
    for start, n in ranges:
        assert rf.pread(start, n) == data[start:start + n]
    rf.seek(-22, 2)
    assert rf.read() == data[-22:]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_corrupted_remote_file_fails_like_a_local_one(served, data) -> None:
    """A damaged byte anywhere: the URL and the path give the same outcome (an error, or a
    file that opens and then fails verify)."""
    _, _, root = served
    raw = bytearray((root / "base.anc").read_bytes())
    # Bias towards the structure (tail, headers) where damage is interesting; tensors otherwise.
    pos = data.draw(st.one_of(st.integers(len(raw) - (64 << 10), len(raw) - 1),
                              st.integers(0, 4096), st.integers(0, len(raw) - 1)))
    raw[pos] ^= data.draw(st.integers(1, 255))
    name = f"corrupt-{os.getpid()}.anc"
    (root / name).write_bytes(bytes(raw))

    def outcome(location: str) -> str:
        try:
            with anemoi_ckpt.open(location) as ck:
                return "ok" if ck.verify(progress=False).ok else "damaged"
        except AncError as e:
            return type(e).__name__

    assert outcome(url(served, name)) == outcome(str(root / name))


def test_remote_reads_never_unpickle(served) -> None:
    code = ("import pickle, sys, anemoi_ckpt\n"
            "def boom(*a, **k): raise SystemExit('unpickled')\n"
            "pickle.loads = pickle.load = pickle.Unpickler = boom\n"
            f"ck = anemoi_ckpt.open({url(served, 'child.anc')!r})\n"
            "print(len(ck.state_dict()), ck.verify(progress=False).ok)\n")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == [str(N_TENSORS), "True"], out.stderr


def test_url_output_refused_by_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a path-joining bug would write "s3:/bucket/..." here
    with pytest.raises(FormatError, match="cannot write to a URL"):
        anemoi_ckpt.save("s3://bucket/x.anc", {"w": torch.zeros(2)})
    assert list(tmp_path.iterdir()) == []


def test_lineage_through_the_catalogue_of_a_remote_file(served, tmp_path: Path) -> None:
    """A file naming its parent by reference only (no record in it): ``lineage URL --catalogue``
    fills the parent's record in from the catalogue, and a uuid alone draws the same history."""
    srv, proxy, root = served
    with anemoi_ckpt.open(root / "base.anc") as ck:
        ref = {"uuid": ck.uuid, "content_id": ck.content_id, "role": "base"}
    anemoi_ckpt.save(root / "byref.anc", {"w": torch.zeros(3)}, parents=[ref], operation="fine-tune")
    db = tmp_path / "cat.db"
    assert run_cli("catalogue", "register", url(served, "base.anc"), "--catalogue", str(db)).returncode == 0
    plain = run_cli("lineage", url(served, "byref.anc"))
    assert "not an .anc: no record" in plain.stdout  # the file alone does not know its parent
    proxy.reset()
    out = run_cli("lineage", url(served, "byref.anc"), "--catalogue", str(db), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [r["uuid"] for r in doc["lineage"]["records"]][1] == ref["uuid"]
    assert doc["resolved"]["from_catalogue"] == [ref["uuid"]]
    assert proxy.bytes_down < 256 << 10  # the manifest and lineage of byref.anc only
    tree = run_cli("lineage", url(served, "byref.anc"), "--catalogue", str(db))
    assert "no record" not in tree.stdout and "create" in tree.stdout
    assert run_cli("catalogue", "register", url(served, "byref.anc"), "--catalogue", str(db)).returncode == 0
    with anemoi_ckpt.open(root / "byref.anc") as ck:
        own = ck.uuid
    by_uuid = run_cli("lineage", own[:8], "--catalogue", str(db))
    assert by_uuid.returncode == 0 and by_uuid.stdout == tree.stdout

