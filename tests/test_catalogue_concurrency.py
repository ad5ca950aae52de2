"""The catalogue under several writers and under SIGKILL: real processes, a real SQLite file.

Every entry must be whole (checkpoint row + its locations + its edges + its records) or absent,
and the file must pass ``PRAGMA integrity_check`` whatever happened to the writers.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import torch

import anemoi_ckpt
from anemoi_ckpt import catalogue as cat


def save(path: Path, v: float, **kw) -> str:
    anemoi_ckpt.save(path, {"w": torch.full((4,), float(v))}, kind="training", durable=False, **kw)
    return str(path)


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anemoi_ckpt", "catalogue", *args], text=True,
                            env={**os.environ, "PYTHONWARNINGS": "default"}, **kw)


def assert_consistent(db: Path) -> int:
    """Integrity, foreign keys, and no partial entry. Returns the number of checkpoints."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = conn.execute("SELECT uuid, record_json FROM checkpoints").fetchall()
        for uuid, record_json in rows:
            assert conn.execute("SELECT count(*) FROM locations WHERE uuid = ?", (uuid,)).fetchone()[0] >= 1
            assert conn.execute("SELECT 1 FROM records WHERE uuid = ?", (uuid,)).fetchone()
            parents = {p["uuid"] for p in json.loads(record_json)["parents"]}
            edges = {p for (p,) in conn.execute("SELECT parent FROM edges WHERE child = ?", (uuid,))}
            assert edges == parents, uuid
            for p in parents:  # the parents' records came in the same transaction
                assert conn.execute("SELECT 1 FROM records WHERE uuid = ?", (p,)).fetchone()
        return len(rows)
    finally:
        conn.close()


def test_concurrent_registration_from_several_processes(tmp_path):
    base = save(tmp_path / "base.anc", 0)  # every file names it: all writers insert its record
    groups = [[save(tmp_path / f"p{p}-{i:02d}.anc", 100 * p + i + 1, parents=[base]) for i in range(25)]
              for p in range(4)]
    db = tmp_path / "new" / "catalogue.db"  # absent: the four processes also race to create it
    procs = [cli("register", *g, "--catalogue", str(db), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for g in groups]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.count("new ") == 25 and "error" not in err
    assert assert_consistent(db) == 100
    entries = cat.list_entries(db)
    assert {e["locations"][0] for e in entries} == {str(Path(f).resolve()) for g in groups for f in g}
    base_uuid = json.loads(json.dumps(cat.show(db, entries[0]["uuid"])))["parents"][0]["uuid"]
    assert len(cat.show(db, base_uuid)["children"]) == 100  # known as an ancestor, not registered
    assert cat.show(db, base_uuid)["registered"] is False


def _register_until(db: Path, files: list[str], lines: int) -> int:
    """Start `catalogue register FILES` and SIGKILL it once it has reported ``lines`` files.
    SIGSTOP first: the writer freezes at once wherever it is (often inside a transaction), where
    taking the lock from here would lose to it (SQLite's lock is not fair) until it had finished."""
    proc = cli("register", *files, "--catalogue", str(db), stdout=subprocess.PIPE,
               stderr=subprocess.DEVNULL)
    try:
        for _ in range(lines):
            assert proc.stdout.readline()
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return assert_consistent(db)


def test_interrupted_registration_leaves_whole_entries_and_a_rerun_completes(tmp_path):
    base = save(tmp_path / "base.anc", 0)
    files = [save(tmp_path / f"f{i:03d}.anc", i + 1, parents=[base]) for i in range(150)]
    db = tmp_path / "catalogue.db"
    cat.register(db, [base])
    n = _register_until(db, files, 10)
    assert 11 <= n < 151  # base + at least the 10 reported, not all of them: killed midway
    for lines in (1, 5):  # again, from the start: the first files are "known" now
        n = _register_until(db, files, lines)
    out = subprocess.run([sys.executable, "-m", "anemoi_ckpt", "catalogue", "register", *files,
                          "--catalogue", str(db), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    statuses = [r["status"] for r in json.loads(out.stdout)]
    assert statuses.count("known") == n - 1 and statuses.count("new") == 151 - n
    assert assert_consistent(db) == 151
