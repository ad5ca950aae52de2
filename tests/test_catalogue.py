"""The checkpoint catalogue (``anemoi_ckpt.catalogue``, ``anemoi-ckpt catalogue ...``).

Real ``.anc`` files written with the public API, a real SQLite file, the real CLI in a
subprocess. Concurrency and interrupted registrations are in test_catalogue_concurrency.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anemoi_ckpt
from anemoi_ckpt import catalogue as cat
from anemoi_ckpt.catalogue.register import Entry, parents_first
from anemoi_ckpt.lineage.view import RENDERERS, check_lineage
from anemoi_ckpt.container.schema import Lineage, LineageRecord, ParentRef, Tool
from tests.conftest import one_error_line, run_cli


def save(path: Path, v: float, **kw) -> Path:
    anemoi_ckpt.save(path, {"w": torch.full((4,), float(v))}, kind=kw.pop("kind", "training"),
                     durable=False, **kw)
    return path


def ident(path: Path) -> tuple[str, str]:
    with anemoi_ckpt.open(path) as ck:
        return ck.uuid, ck.content_id


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, (out.stdout, out.stderr)
    return out.stdout


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """base -> ft (fine-tune) -> inf (convert, naming ft only by reference), and a side branch."""
    d = tmp_path / "ck"
    d.mkdir()
    base = save(d / "base.anc", 0, parameters={"seed": 1})
    ft = save(d / "ft.anc", 1, parents=[base], operation="fine-tune")
    uuid, cid = ident(ft)
    inf = save(d / "inf.anc", 2, kind="inference", parents=[{"uuid": uuid, "content_id": cid}],
               operation="convert")
    side = save(d / "side.anc", 3, parents=[base], operation="fine-tune")
    return {"base": base, "ft": ft, "inf": inf, "side": side}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cat" / "catalogue.db"


# --- register, list, show, locate through the CLI --------------------------------------------

def test_register_list_show_locate_cli(files, db):
    out = json.loads(ok(run_cli("catalogue", "register", *map(str, files.values()), "--catalogue",
                                str(db), "--json")))
    assert [r["status"] for r in out] == ["new"] * 4
    assert {r["location"] for r in out} == {str(p.resolve()) for p in files.values()}
    listed = json.loads(ok(run_cli("catalogue", "list", "--catalogue", str(db), "--json")))
    assert {e["uuid"] for e in listed} == {ident(p)[0] for p in files.values()}
    assert all(e["size"] == os.path.getsize(e["locations"][0]) for e in listed)
    text = ok(run_cli("catalogue", "list", "--kind", "inference", "--catalogue", str(db)))
    uuid_inf = ident(files["inf"])[0]
    assert uuid_inf[:8] in text and ident(files["base"])[0][:8] not in text
    assert "1 checkpoint(s)" in text
    # show: parents and children through the edges
    uuid_ft = ident(files["ft"])[0]
    shown = json.loads(ok(run_cli("catalogue", "show", uuid_ft[:8], "--catalogue", str(db), "--json")))
    assert shown["registered"] and shown["record"]["operation"] == "fine-tune"
    assert [p["uuid"] for p in shown["parents"]] == [ident(files["base"])[0]]
    assert [c["uuid"] for c in shown["children"]] == [uuid_inf]
    text = ok(run_cli("catalogue", "show", uuid_ft, "--catalogue", str(db)))
    assert "fine-tune" in text and str(files["ft"].resolve()) in text
    assert ok(run_cli("catalogue", "locate", uuid_ft[:10], "--catalogue", str(db))).strip() == \
        str(files["ft"].resolve())


def test_catalogue_from_environment(files, db, monkeypatch):
    monkeypatch.setenv("ANEMOI_CKPT_CATALOGUE", str(db))
    ok(run_cli("catalogue", "register", str(files["base"])))
    assert db.exists()
    assert ident(files["base"])[0][:8] in ok(run_cli("catalogue", "list"))
    assert "ANEMOI_CKPT_CATALOGUE" in ok(run_cli("catalogue", "list", "--help"))


def test_reregistering_is_idempotent_and_adds_locations(files, db, tmp_path):
    first = cat.register(db, [files["base"]])
    again = cat.register(db, [files["base"]])
    copy = tmp_path / "copy.anc"
    copy.write_bytes(files["base"].read_bytes())
    moved = cat.register(db, [str(copy)])
    assert [r["status"] for r in first + again + moved] == ["new", "known", "added-location"]
    assert cat.locate(db, first[0]["uuid"]) == [str(files["base"].resolve()), str(copy)]
    os.rename(files["base"], tmp_path / "gone.anc")  # a vanished path is listed after one that exists
    assert cat.locate(db, first[0]["uuid"]) == [str(copy), str(files["base"].resolve())]
    assert [d["status"] for d in cat.locate_detail(db, first[0]["uuid"])] == ["exists", "missing"]
    assert len(cat.list_entries(db)) == 1


def test_same_uuid_different_content_is_refused(files, db, tmp_path):
    uuid, cid = ident(files["base"])
    forged = tmp_path / "forged.anc"
    with anemoi_ckpt.Writer(forged, kind="training", durable=False) as w:
        w.uuid = uuid  # the same identity over other weights: an altered file
        w.add("w", torch.full((4,), 9.0))
    ok(run_cli("catalogue", "register", str(files["base"]), "--catalogue", str(db)))
    line = one_error_line(run_cli("catalogue", "register", str(forged), "--catalogue", str(db)),
                          str(forged), uuid, cid)
    assert "content id" in line
    # a file naming a registered ancestor with another content id is refused the same way
    liar = save(tmp_path / "liar.anc", 5, parents=[{"uuid": uuid, "content_id": "sha256:" + "0" * 64}])
    one_error_line(run_cli("catalogue", "register", str(liar), "--catalogue", str(db)),
                   str(liar), uuid, "content id")
    assert [e["uuid"] for e in cat.list_entries(db)] == [uuid]


# --- --require-parents -----------------------------------------------------------------------

def test_require_parents_refuses_then_accepts(files, db):
    one_error_line(run_cli("catalogue", "register", str(files["ft"]), "--require-parents",
                           "--catalogue", str(db)),
                   str(files["ft"].resolve()), ident(files["base"])[0], "not registered")
    # child before parent on the command line: the batch is ordered parents first
    out = json.loads(ok(run_cli("catalogue", "register", str(files["inf"]), str(files["ft"]),
                                str(files["base"]), "--require-parents", "--catalogue", str(db),
                                "--json")))
    assert [r["location"] for r in out] == [str(files[k].resolve()) for k in ("base", "ft", "inf")]


def _entry(uuid: str, parents: list[str], created: str = "2025-01-01T00:00:00Z") -> Entry:
    rec = LineageRecord(uuid=uuid, kind="training", content_id=f"sha256:{uuid}", operation="create",
                        parents=[ParentRef(uuid=p) for p in parents], created=created,
                        tool=Tool(name="test", version="0"))
    return Entry(location=f"/nowhere/{uuid}.anc", uuid=uuid, content_id=rec.content_id, kind="training",
                 size=1, created=created, format_version="1.1", lineage=Lineage(records=[rec]))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.lists(st.integers(0, n - 1), max_size=3), min_size=n, max_size=n),
    st.permutations(range(n)))))
def test_parents_first_orders_any_dag(case):
    n, parent_lists, order = case
    # edges only from a lower index to a higher one: a DAG, whatever hypothesis draws
    entries = [_entry(f"u{i:02d}", [f"u{p:02d}" for p in set(ps) if p < i]) for i, ps in enumerate(parent_lists)]
    batch = [entries[i] for i in order]
    out = parents_first(batch)
    assert sorted(e.uuid for e in out) == sorted(e.uuid for e in batch)
    pos = {e.uuid: k for k, e in enumerate(out)}
    assert all(pos[p.uuid] < pos[e.uuid] for e in out for p in e.parents)


# --- uuids: prefixes, tags --------------------------------------------------------------------

def test_prefix_resolution_and_tags(db):
    conn = cat.connect(db, create=True)
    try:
        cat.register_records(conn, [_entry("aaaaaaaa-0000-4000-8000-000000000001", []),
                                    _entry("aaaaaaaa-0000-4000-8000-000000000002", []),
                                    _entry("bbbbbbbb-0000-4000-8000-000000000003", [])])
    finally:
        conn.close()
    assert cat.tag(db, "bbbbbbbb", "release") == {"uuid": "bbbbbbbb-0000-4000-8000-000000000003",
                                                  "tag": "release", "added": True}
    assert cat.tag(db, "BBBBBBBB0000", "release")["added"] is False  # dashes and case optional
    one_error_line(run_cli("catalogue", "tag", "aaaaaaaa", "x", "--catalogue", str(db)),
                   str(db), "ambiguous", "000000000001", "000000000002")
    one_error_line(run_cli("catalogue", "show", "cccccccc", "--catalogue", str(db)), "no ", "cccccccc")
    one_error_line(run_cli("catalogue", "tag", "aaaa", "x", "--catalogue", str(db)), "8 hex", rc=2)
    one_error_line(run_cli("catalogue", "tag", "bbbbbbbb", "bad tag", "--catalogue", str(db)),
                   "invalid tag", rc=2)
    ok(run_cli("catalogue", "tag", "aaaaaaaa-0000-4000-8000-000000000001", "release", "--catalogue", str(db)))
    listed = json.loads(ok(run_cli("catalogue", "list", "--tag", "release", "--catalogue", str(db), "--json")))
    assert [e["uuid"][-1] for e in listed] == ["1", "3"]
    assert json.loads(ok(run_cli("catalogue", "untag", "bbbbbbbb", "release", "--catalogue", str(db),
                                 "--json")))["removed"]
    one_error_line(run_cli("catalogue", "untag", "bbbbbbbb", "release", "--catalogue", str(db)),
                   "has no tag 'release'")
    assert [e["uuid"][-1] for e in cat.list_entries(db, tag="release")] == ["1"]


# --- lineage through the catalogue ------------------------------------------------------------

def test_lineage_through_catalogue_fills_a_reference_only_parent(files, db):
    cat.register(db, [files["ft"]])  # carries base's record too
    with anemoi_ckpt.open(files["inf"]) as ck:
        own = ck.lineage
    assert len(own.records) == 1  # inf names ft by reference only: no record of it in the file
    block, info = cat.lineage_through_catalogue(db, str(files["inf"]))
    uuids = [r.uuid for r in block.records]
    assert uuids == [ident(files[k])[0] for k in ("inf", "ft", "base")]
    assert info["source"] == "file" and info["from_catalogue"] == uuids[1:] and not info["without_record"]
    check_lineage(block, "x", uuids[0])
    tree = RENDERERS["tree"](block)
    assert "fine-tune" in tree and "no record" not in tree
    for fmt in ("json", "dot", "mermaid"):
        assert uuids[2][:8] in RENDERERS[fmt](block)
    # from a uuid alone (not even inf is registered: its record is not known) -> ft's history
    by_uuid = cat.resolve_lineage(db, uuids[1][:8])
    assert [r.uuid for r in by_uuid.records] == uuids[1:]
    assert by_uuid.records[1].model_dump(mode="json") == block.records[2].model_dump(mode="json")
    # an unregistered file whose parent the catalogue does not know keeps its gap, reported
    cat_empty = cat.resolve_lineage(db, own.model_copy(update={"records": [own.records[0].model_copy(
        update={"parents": [ParentRef(uuid="ffffffff-0000-4000-8000-000000000000")]})]}))
    assert len(cat_empty.records) == 1


# --- gc ---------------------------------------------------------------------------------------

def test_gc_lists_then_deletes_exactly_the_unneeded(files, db, tmp_path):
    extra = save(tmp_path / "ck" / "extra.anc", 7)
    cat.register(db, [*files.values(), extra])
    uuid = {k: ident(p)[0] for k, p in {**files, "extra": extra}.items()}
    cat.tag(db, uuid["inf"], "release")
    one_error_line(run_cli("catalogue", "gc", "--catalogue", str(db)), "keep tag", rc=2)
    plan = json.loads(ok(run_cli("catalogue", "gc", "--keep-tag", "release", "--catalogue", str(db), "--json")))
    # inf is kept with its ancestors ft and base; side and extra go
    assert {c["uuid"] for c in plan["candidates"]} == {uuid["side"], uuid["extra"]}
    assert all(p.exists() for p in [*files.values(), extra])  # listing deletes nothing
    # extra's path now holds another checkpoint: it must survive the collection
    save(extra, 8)
    replaced_by = ident(extra)
    out = run_cli("catalogue", "gc", "--keep-tag", "release", "--yes", "--catalogue", str(db))
    assert out.returncode == 0, out.stderr
    assert f"deleted   {uuid['side'][:8]}" in out.stdout
    # extra's stale claim is dropped, so its entry goes too, but its file was not deleted
    assert "1 file(s) deleted; 2 of 2 catalogue entries removed" in out.stdout
    assert "now holds another checkpoint" in out.stderr and "Traceback" not in out.stderr
    assert not files["side"].exists() and extra.exists() and ident(extra) == replaced_by
    assert all(files[k].exists() for k in ("base", "ft", "inf"))
    assert {e["uuid"] for e in cat.list_entries(db)} == {uuid[k] for k in ("base", "ft", "inf")}
    # side's record stays as history: its lineage still resolves from the catalogue
    assert cat.resolve_lineage(db, uuid["side"]).records[0].uuid == uuid["side"]


def test_gc_refuses_unknown_keep_tag(files, db):
    cat.register(db, list(files.values()))
    one_error_line(run_cli("catalogue", "gc", "--keep-tag", "relase", "--yes", "--catalogue", str(db)),
                   "no checkpoint has the tag 'relase'")
    assert all(p.exists() for p in files.values())


# --- bad catalogues -----------------------------------------------------------------------------

def test_missing_directory_and_non_sqlite_catalogues(tmp_path):
    missing = tmp_path / "nope.db"
    one_error_line(run_cli("catalogue", "list", "--catalogue", str(missing)), str(missing), "no such catalogue")
    assert not missing.exists()  # a read never creates one
    one_error_line(run_cli("catalogue", "show", "aaaaaaaa", "--catalogue", str(tmp_path)), "is a directory")
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all\n" * 200)
    for cmd in (["list"], ["register", str(text)], ["gc", "--keep-tag", "x"]):
        args = ["catalogue", *cmd, "--catalogue", str(text)]
        if cmd[0] == "register":  # the file to register is fine: the catalogue is the problem
            args[2] = str(save(tmp_path / "ok.anc", 1))
        one_error_line(run_cli(*args), str(text), "not a catalogue")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    one_error_line(run_cli("catalogue", "register", str(tmp_path / "ok.anc"), "--catalogue", str(foreign)),
                   str(foreign), "another application")
    with sqlite3.connect(foreign) as conn:  # left as it was: not switched to WAL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_damaged_and_newer_catalogues(files, db, tmp_path):
    cat.register(db, list(files.values()))
    newer = tmp_path / "newer.db"
    newer.write_bytes(db.read_bytes())
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    one_error_line(run_cli("catalogue", "list", "--catalogue", str(newer)), str(newer), "newer")
    raw = bytearray(db.read_bytes())
    page = 4096
    assert len(raw) > 3 * page
    raw[page:] = bytes(range(256)) * ((len(raw) - page) // 256) + bytes((len(raw) - page) % 256)
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(bytes(raw))
    for cmd in (["list"], ["show", ident(files["ft"])[0]], ["gc", "--keep-tag", "x"]):
        one_error_line(run_cli("catalogue", *cmd, "--catalogue", str(damaged)), str(damaged), "damaged")
    with pytest.raises(cat.CatalogueError, match="damaged"):
        cat.list_entries(damaged)


def test_url_locations_are_kept_verbatim_and_collected_through_fsspec(files, db, tmp_path):
    url = files["side"].resolve().as_uri()  # file:///...: the reader's URL path, fsspec's rm
    try:
        anemoi_ckpt.open(url).close()
    except anemoi_ckpt.AncError as e:
        pytest.skip(f"this reader does not open URLs yet: {e.line()}")
    cat.register(db, [files["base"], files["ft"], url])
    uuid_side = ident(files["side"])[0]
    assert cat.locate_detail(db, uuid_side) == [{**cat.locate_detail(db, uuid_side)[0],
                                                 "location": url, "status": "remote"}]
    cat.tag(db, ident(files["ft"])[0], "keep")
    report = cat.gc(db, ["keep"], delete=True)
    assert [r["locations"] for r in report["results"]] == [[{"location": url, "action": "deleted"}]]
    assert not files["side"].exists() and files["base"].exists()


def test_lineage_helper_errors_name_the_argument(files, db):
    cat.register(db, [files["base"]])
    with pytest.raises(cat.CatalogueError, match="no such file, and no uuid deadbeef00 in the catalogue"):
        cat.lineage_through_catalogue(db, "deadbeef00")
    with pytest.raises(anemoi_ckpt.AncError, match="no such file"):
        cat.lineage_through_catalogue(db, "missing.anc")
    with pytest.raises(cat.CatalogueError, match="no such catalogue"):
        cat.lineage_through_catalogue(db.with_name("other.db"), str(files["base"]))
