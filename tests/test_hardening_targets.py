"""Hardening (issue 16, items 11 and 12): nothing written or deleted outside the target.

- ``catalogue gc --yes`` checks and deletes the very same object: crafted catalogue rows whose
  location forms read differently for different parsers (``file://localhost/...``, ``::``
  chains, ``%``/``?``/``#`` in ``file://``, relative paths) are left in place, and no file other
  than the checked one is ever deleted.
- ``fetch`` never follows, writes or appends through a planted resume file (symbolic link, hard
  link, FIFO) at ``.NAME.part`` / ``.NAME.part.json``, and trusts a resume record only when it
  is exactly this transfer's.

Real files, a real SQLite catalogue, the real CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import anemoi_ckpt
from anemoi_ckpt import catalogue as cat
from anemoi_ckpt.container.urls import ambiguous
from anemoi_ckpt.errors import AncError
from anemoi_ckpt.remote.download import MAX_RECORD, download

from conftest import one_error_line, run_cli

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def save(path: Path, v: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    anemoi_ckpt.save(path, {"w": torch.full((4,), float(v))}, kind="training", durable=False)
    return path


def ident(path: Path) -> tuple[str, str]:
    with anemoi_ckpt.open(path) as ck:
        return ck.uuid, ck.content_id


def digest_tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file bytes hashed, links by target (what must not change)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --- item 11: catalogue gc ------------------------------------------------------------------------

def _add_location(db: Path, uuid: str, location: str) -> None:
    """A crafted catalogue row (the hostile input): a location register() would never write."""
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO locations (uuid, location, added) VALUES (?, ?, ?)",
                     (uuid, location, dt.datetime.now(dt.timezone.utc).isoformat()))
    conn.close()


def _setup(d: Path) -> tuple[Path, Path, Path, Path]:
    """keep.anc (tagged), cand.anc (a gc candidate), and victims: unrelated files a second
    parser would reach from the candidate's crafted locations."""
    db = d / "cat.db"
    keep, cand = save(d / "ck" / "keep.anc", 0), save(d / "ck" / "cand.anc", 1)
    cat.register(db, [keep, cand])
    cat.tag(db, ident(keep)[0], "keep")
    return db, keep, cand, d / "victims"


def _forms(d: Path, cand: Path) -> list[tuple[str, Path | None]]:
    """(crafted location, the victim file a differing parser would name). The literal path the
    reader takes is made to hold a copy of the candidate, so the identity check passes."""
    victims = d / "victims"
    a = str(cand)
    out: list[tuple[str, Path | None]] = []
    # fsspec reads file://localhost/x as the relative path localhost/x (cwd is d)
    out.append((f"file://localhost{a}", d / ("localhost" + a)))
    # "::" chains: fsspec opens the first URL of the chain; the reader, the whole literal path
    chained = f"{victims / 'chain.anc'}::file://{a}"
    out.append((f"file://{chained}", victims / "chain.anc"))
    out.append((chained, victims / "chain.anc"))
    # percent-escapes and ?/# are decoded or cut by URL parsers, taken literally by the reader
    out.append((f"file://{victims / 'pct%2Eanc'}", victims / "pct.anc"))
    out.append((f"file://{victims / 'q.anc'}?x=1", victims / "q.anc"))
    out.append((f"file://{victims / 'h.anc'}#frag", victims / "h.anc"))
    out.append(("file:////" + a.lstrip("/"), None))
    out.append((os.path.relpath(cand, d), None))  # relative: depends on the working directory
    return out


def _plant(location: str, victim: Path | None, cand: Path) -> None:
    from anemoi_ckpt.container.urls import local_path

    if victim is not None:
        save(victim, 99)  # a valid, unrelated checkpoint
    try:
        literal = local_path(location)
    except AncError:
        literal = None
    if literal and os.path.isabs(literal) and not os.path.exists(literal):
        Path(literal).parent.mkdir(parents=True, exist_ok=True)
        Path(literal).write_bytes(cand.read_bytes())  # the reader's reading: the candidate itself


def test_every_crafted_form_is_refused_and_nothing_else_is_deleted(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db, keep, cand, victims = _setup(tmp_path)
    uuid = ident(cand)[0]
    forms = _forms(tmp_path, cand)
    for loc, victim in forms:
        _plant(loc, victim, cand)
        _add_location(db, uuid, loc)
        assert ambiguous(loc), loc
    before = digest_tree(tmp_path)
    report = cat.gc(db, ["keep"], delete=True)
    after = digest_tree(tmp_path)
    gone = set(before) - set(after)
    assert gone == {str(cand)}, gone  # only the registered, unambiguous, checked file
    assert {k: v for k, v in before.items() if k not in gone and k != str(db)} == \
        {k: v for k, v in after.items() if k != str(db) and not k.startswith(str(db))}
    (res,) = report["results"]
    actions = {r["location"]: (r["action"], r.get("note", "")) for r in res["locations"]}
    assert actions[str(cand)][0] == "deleted"
    for loc, _ in forms:
        assert actions[loc][0] == "skipped" and "ambiguous location" in actions[loc][1], actions[loc]
    assert not res["removed"]  # the crafted locations keep the entry in the catalogue


@SETTINGS
@given(form=st.integers(min_value=0, max_value=7), planted=st.booleans(),
       prefix=st.sampled_from(["", "./", "sub/../"]))
def test_gc_bounded_for_each_form(form: int, planted: bool, prefix: str) -> None:
    """One crafted location at a time, victims planted or not: gc deletes nothing but files it
    checked, and the victim survives byte for byte."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        old = os.getcwd()
        os.chdir(d)
        try:
            db, keep, cand, victims = _setup(d)
            uuid = ident(cand)[0]
            loc, victim = _forms(d, cand)[form]
            if not os.path.isabs(loc) and "://" not in loc:
                loc = prefix + loc
            if planted:
                _plant(loc, victim, cand)
            with sqlite3.connect(db) as conn:  # the crafted location is its only one
                conn.execute("DELETE FROM locations WHERE uuid = ?", (uuid,))
            conn.close()
            _add_location(db, uuid, loc)
            before = digest_tree(d)
            report = cat.gc(db, ["keep"], delete=True)
            after = digest_tree(d)
            assert {k: v for k, v in before.items() if "cat.db" not in k} == \
                {k: v for k, v in after.items() if "cat.db" not in k}
            (res,) = report["results"]
            assert res["locations"][0]["action"] == "skipped" and not res["removed"]
        finally:
            os.chdir(old)


def test_plain_paths_and_file_urls_are_still_collected(tmp_path: Path) -> None:
    db, keep, cand, _ = _setup(tmp_path)
    other = save(tmp_path / "ck" / "other.anc", 2)
    cat.register(db, [f"file://{other}"])
    report = cat.gc(db, ["keep"], delete=True)
    assert all(r["removed"] for r in report["results"]) and len(report["results"]) == 2
    assert not cand.exists() and not other.exists() and keep.exists()


def test_symlinked_location_deletes_the_link_not_its_target(tmp_path: Path) -> None:
    db = tmp_path / "cat.db"
    keep = save(tmp_path / "ck" / "keep.anc", 0)
    real = save(tmp_path / "elsewhere" / "real.anc", 1)
    link = tmp_path / "ck" / "link.anc"
    link.symlink_to(real)
    cat.register(db, [keep])
    cat.tag(db, ident(keep)[0], "keep")
    cat.register(db, [link])
    cat.gc(db, ["keep"], delete=True)
    assert not os.path.lexists(link) and real.exists()  # the entry registered, nothing beyond it


def test_remote_objects_are_deleted_through_the_reader_filesystem(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    db, keep, cand, _ = _setup(tmp_path)
    mem = fsspec.filesystem("memory")
    name = f"/hardening-{os.getpid()}/cand.anc"
    mem.pipe(name, cand.read_bytes())
    uuid = ident(cand)[0]
    _add_location(db, uuid, f"memory://{name}")
    _add_location(db, uuid, f"simplecache::memory://{name}")
    report = cat.gc(db, ["keep"], delete=True)
    acts = {r["location"]: r["action"] for r in report["results"][0]["locations"]}
    assert acts[f"memory://{name}"] == "deleted" and not mem.exists(name)
    assert acts[f"simplecache::memory://{name}"] == "skipped"


def test_cli_gc_prints_one_line_per_refused_location(tmp_path: Path) -> None:
    db, keep, cand, victims = _setup(tmp_path)
    victim = save(victims / "chain.anc", 5)
    _add_location(db, ident(cand)[0], f"{victim}::file://{cand}")
    out = run_cli("catalogue", "gc", "--keep-tag", "keep", "--yes", "--catalogue", str(db), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "ambiguous location" in out.stderr
    assert victim.exists() and not cand.exists()


# --- item 12: fetch's resume files ---------------------------------------------------------------

@pytest.fixture
def source(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "src" / "model.anc"
    path.parent.mkdir()
    anemoi_ckpt.save(path, {f"w{i}": torch.randn(64, 64, generator=g) for i in range(8)}, durable=False)
    return path


def _victim(d: Path) -> Path:
    v = d / "victim" / "precious.txt"
    v.parent.mkdir(exist_ok=True)
    v.write_bytes(b"do not touch\n" * 100)
    return v


@pytest.mark.parametrize("which", [".model.anc.part", ".model.anc.part.json"])
@pytest.mark.parametrize("how", ["symlink", "dangling", "hardlink", "fifo"])
def test_planted_resume_files_are_refused_not_followed(tmp_path: Path, source: Path, which: str, how: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    victim = _victim(tmp_path)
    before = digest_tree(victim.parent)
    planted = out_dir / which
    if how == "symlink":
        planted.symlink_to(victim)
    elif how == "dangling":
        planted.symlink_to(tmp_path / "victim" / "created-through-link")
    elif how == "hardlink":
        os.link(victim, planted)
    else:
        os.mkfifo(planted)
    res = run_cli("fetch", str(source), "-o", str(out_dir) + "/")
    line = one_error_line(res, str(planted), "resume file", rc=2)
    assert "remove it" in line
    assert digest_tree(victim.parent) == before  # nothing written, appended or created there
    assert not (out_dir / "model.anc").exists()
    planted.unlink()
    assert run_cli("fetch", str(source), "-o", str(out_dir) + "/").returncode == 0
    assert (out_dir / "model.anc").read_bytes() == source.read_bytes()


_RECORDS = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'{"source": 1}', b"[" * 100_000, b"1e999",
                     b'"' + b"x" * (MAX_RECORD + 10) + b'"']),
    st.builds(lambda size, src, uuid: json.dumps({"source": src, "size": size, "uuid": uuid,
                                                  "content_id": None}).encode(),
              st.one_of(st.integers(-5, 10 ** 7), st.just(True), st.floats(allow_nan=True)),
              st.sampled_from(["SRC", "other"]), st.sampled_from([None, 5, ""])),
)


@SETTINGS
@given(record=_RECORDS, part=st.one_of(st.none(), st.binary(max_size=2000), st.sampled_from(["prefix", "long"])))
def test_crafted_resume_records_give_a_verified_file_or_one_refusal(source: Path, record: bytes,
                                                                    part: bytes | str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        data = source.read_bytes()
        record = record.replace(b"SRC", str(source).encode())
        if part == "prefix":
            part = data[: len(data) // 2]
            record = json.dumps({"source": str(source), "size": len(data), "uuid": None,
                                 "content_id": None}).encode()
        elif part == "long":
            part = data + b"junk"
        (out_dir / ".model.anc.part.json").write_bytes(record)
        if part is not None:
            (out_dir / ".model.anc.part").write_bytes(part)
        dest = out_dir / "model.anc"
        try:
            report = download(str(source), dest, progress=False)
        except AncError as e:  # a crafted prefix of other bytes fails verification: one line
            assert "\n" not in e.line() and ("does not verify" in e.line() or "content id" in e.line())
            assert not dest.exists() and not (out_dir / ".model.anc.part").exists()
            report = download(str(source), dest, progress=False)  # and the next run starts afresh
        assert dest.read_bytes() == data and report.size == len(data)
        assert sorted(p.name for p in out_dir.iterdir()) == ["model.anc"]


def test_resume_from_a_genuine_prefix_still_works(tmp_path: Path, source: Path) -> None:
    data = source.read_bytes()
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / ".model.anc.part").write_bytes(data[:1000])
    (out_dir / ".model.anc.part.json").write_text(json.dumps(
        {"source": str(source), "size": len(data), "uuid": None, "content_id": None}))
    report = download(str(source), out_dir, progress=False)
    assert report.resumed_from == 1000 and Path(report.path).read_bytes() == data


def test_url_basename_dot_dot_is_not_a_folder() -> None:
    from anemoi_ckpt.container.urls import basename

    assert basename("https://host/a/..") == "checkpoint.anc"
    assert basename("https://host/.") == "checkpoint.anc"
