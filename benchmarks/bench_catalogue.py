#!/usr/bin/env python
"""How fast is the checkpoint catalogue with 10,000 registered checkpoints?

The issue's targets: with 10,000 entries, ``catalogue list --tag`` and the lineage resolution of a
50-generation chain each take < 100 ms.

The catalogue is built with the same code ``catalogue register`` runs (``register_records``, one
transaction per entry) from entries made here instead of read from 10,000 ``.anc`` files: a
50-generation chain (each generation carrying its ancestors' records, as written files do), and
9,950 other checkpoints with 0-2 parents among earlier ones; 10% carry the tag ``release``, 2%
``ops``. Then, median of ``--repeat`` runs, each from a fresh connection (as a CLI call opens it):

- ``list_entries(db, tag="release")`` (the API) and ``catalogue list --tag release`` (text and
  ``--json``), the CLI run in-process with click's CliRunner (no interpreter start);
- ``resolve_lineage(db, <generation 50>)`` from the catalogue alone, ``resolve_lineage`` of a
  block holding only the file's own record, and ``lineage_through_catalogue`` + the tree drawing
  (what ``lineage --catalogue`` does);
- the peer: the same answers by a naive scan, reading every row (``record_json`` included) and
  filtering or walking in Python, as a catalogue without indexes and SQL recursion would.

Run from the repository root::

    .venv/bin/python benchmarks/bench_catalogue.py                 # 10,000 entries, 7 repeats
    .venv/bin/python benchmarks/bench_catalogue.py --entries 2000  # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import anemoi_ckpt
from anemoi_ckpt import catalogue as cat
from anemoi_ckpt.catalogue.register import Entry
from anemoi_ckpt.cli import catalogue_cmds  # noqa: F401 - registers the commands
from anemoi_ckpt.cli.main import cli
from anemoi_ckpt.lineage.view import RENDERERS
from anemoi_ckpt.container.schema import Lineage, LineageRecord, ParentRef, Tool

TARGET_S = 0.100
CHAIN = 50
KINDS = ("training", "training", "training", "inference", "adapter", "delta")


# --------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------

def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:]}"


def _record(rng: random.Random, i: int, parents: list[LineageRecord]) -> LineageRecord:
    uuid = _uuid(rng)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1.7e9 + 600 * i))
    return LineageRecord(uuid=uuid, kind=rng.choice(KINDS) if parents else "training",
                         content_id=f"sha256:{rng.getrandbits(256):064x}",
                         operation="fine-tune" if parents else "create",
                         parameters={"lr": 1e-4, "epochs": i % 7, "run": f"run-{i}"},
                         parents=[ParentRef(uuid=p.uuid, content_id=p.content_id) for p in parents],
                         created=created, tool=Tool(name="anemoi-ckpt", version=anemoi_ckpt.__version__))


def _entry(rec: LineageRecord, ancestors: list[LineageRecord], i: int) -> Entry:
    return Entry(location=f"/scratch/experiments/exp-{i // 100:03d}/ckpt-{i:05d}.anc", uuid=rec.uuid,
                 content_id=rec.content_id, kind=rec.kind, size=1_000_000_000 + i, created=rec.created,
                 format_version="1.1", lineage=Lineage(records=[rec, *ancestors]))


def build(db: Path, n: int, seed: int) -> dict[str, Any]:
    """The catalogue: a 50-generation chain, then n - 50 others; tags on 10% (+2%)."""
    rng = random.Random(seed)
    entries: list[Entry] = []
    chain: list[LineageRecord] = []
    for g in range(CHAIN):
        rec = _record(rng, g, chain[-1:])
        entries.append(_entry(rec, chain[::-1], g))  # a written file carries all its ancestors
        chain.append(rec)
    records = list(chain)
    by_uuid = {r.uuid: r for r in records}
    for i in range(CHAIN, n):
        k = rng.choice((0, 1, 1, 1, 2)) if len(records) > 2 else 0
        parents = rng.sample(records[-500:], k)  # recent parents: runs descend from recent runs
        rec = _record(rng, i, parents)
        ancestors: dict[str, LineageRecord] = {}
        stack = list(parents)
        while stack and len(ancestors) < 20:  # bounded copy: keeps the build quick
            p = stack.pop()
            if p.uuid not in ancestors:
                ancestors[p.uuid] = p
                stack.extend(by_uuid[q.uuid] for q in p.parents)
        entries.append(_entry(rec, list(ancestors.values()), i))
        records.append(rec)
        by_uuid[rec.uuid] = rec
    t0 = time.perf_counter()
    conn = cat.connect(db, create=True)
    try:
        cat.register_records(conn, entries)
        t_register = time.perf_counter() - t0
        tagged = rng.sample(range(n), n // 10)
        for i in tagged:
            cat.tag(conn, entries[i].uuid, "release")
        for i in rng.sample(range(n), n // 50):
            cat.tag(conn, entries[i].uuid, "ops")
        cat.tag(conn, chain[-1].uuid, "release")
    finally:
        conn.close()
    return {"entries": n, "register_seconds": t_register, "build_seconds": time.perf_counter() - t0,
            "db_bytes": os.path.getsize(db), "chain_tip": chain[-1].uuid,
            "release_tagged": len(cat.list_entries(db, tag="release")), "tip_record": chain[-1]}


# --------------------------------------------------------------------------------------------
# The peer: a naive scan of every row
# --------------------------------------------------------------------------------------------

def naive_list(db: Path, tag: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    try:
        tags: dict[str, list[str]] = {}
        for uuid, t in conn.execute("SELECT uuid, tag FROM tags"):
            tags.setdefault(uuid, []).append(t)
        locs: dict[str, list[str]] = {}
        for uuid, loc in conn.execute("SELECT uuid, location FROM locations"):
            locs.setdefault(uuid, []).append(loc)
        out = []
        for uuid, size, record_json in conn.execute("SELECT uuid, size, record_json FROM checkpoints"):
            if tag in tags.get(uuid, ()):
                rec = json.loads(record_json)
                out.append({"uuid": uuid, "kind": rec["kind"], "content_id": rec["content_id"],
                            "size": size, "created": rec["created"], "tags": tags[uuid],
                            "locations": locs.get(uuid, [])})
        return sorted(out, key=lambda e: e["created"])
    finally:
        conn.close()


def naive_lineage(db: Path, uuid: str) -> Lineage:
    conn = sqlite3.connect(db)
    try:
        records = {u: json.loads(j) for u, j in conn.execute("SELECT uuid, record_json FROM records")}
    finally:
        conn.close()
    out, queue, seen = [], [uuid], {uuid}
    while queue:
        rec = records[queue.pop(0)]
        out.append(LineageRecord.model_validate(rec))
        for p in rec["parents"]:
            if p["uuid"] in records and p["uuid"] not in seen:
                seen.add(p["uuid"])
                queue.append(p["uuid"])
    return Lineage(records=out)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------

def cli_call(args: list[str]) -> Callable[[], str]:
    runner = CliRunner()

    def run() -> str:
        res = runner.invoke(cli, args, catch_exceptions=False)
        if res.exit_code != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {res.exit_code}: {res.output[-500:]}")
        return res.output
    return run


def run_benchmark(args: argparse.Namespace, db: Path) -> dict[str, Any]:
    H.print_header(f"anemoi-ckpt catalogue benchmark: --entries {args.entries}, --repeat {args.repeat}")
    print(f"SQLite {sqlite3.sqlite_version}; anemoi_ckpt {H.package_origin()}")
    print("\nbuilding the catalogue (register_records, one transaction per entry) ...", flush=True)
    info = build(db, args.entries, args.seed)
    tip, tip_record = info.pop("chain_tip"), info.pop("tip_record")
    print(f"  {info['entries']:,} entries registered in {info['register_seconds']:.1f} s "
          f"(+ tags: {info['build_seconds']:.1f} s in all); {info['db_bytes'] / 1e6:.1f} MB; "
          f"{info['release_tagged']:,} tagged release; chain of {CHAIN} generations, tip {tip[:8]}")
    dbs = str(db)
    own_only = Lineage(records=[tip_record])  # a file naming its parent by reference only
    rows: list[tuple[str, str, Callable[[], Any], str | None]] = [
        ("list-api", "list_entries(tag='release')", lambda: cat.list_entries(dbs, tag="release"), "target"),
        ("list-cli", "catalogue list --tag release", cli_call(["catalogue", "list", "--tag", "release",
                                                               "--catalogue", dbs]), "target"),
        ("list-cli-json", "catalogue list --tag release --json",
         cli_call(["catalogue", "list", "--tag", "release", "--catalogue", dbs, "--json"]), "target"),
        ("list-naive", "(peer) naive scan: list by tag", lambda: naive_list(db, "release"), None),
        ("lineage-uuid", "resolve_lineage(<gen 50 uuid>)", lambda: cat.resolve_lineage(dbs, tip), "target"),
        ("lineage-block", "resolve_lineage(<own record only>)", lambda: cat.resolve_lineage(dbs, own_only),
         "target"),
        ("lineage-tree", "lineage_through_catalogue + tree",
         lambda: RENDERERS["tree"](cat.lineage_through_catalogue(dbs, tip)[0]), "target"),
        ("lineage-naive", "(peer) naive scan: lineage walk", lambda: naive_lineage(db, tip), None),
    ]
    print(f"\nmedian of {args.repeat} runs after one warm-up, each call opening the catalogue afresh")
    print(f"\n  {'operation':<40} {'median ms':>10} {'result':>8}  < {TARGET_S * 1000:.0f} ms")
    out: dict[str, Any] = {}
    for key, label, fn, target in rows:
        seconds, result = H.median_time(fn, args.repeat)
        size = len(result.records) if isinstance(result, Lineage) else \
            len(result.splitlines()) if isinstance(result, str) else len(result)
        verdict = ("PASS" if seconds < TARGET_S else "FAIL") if target else "-"
        out[key] = {"label": label, "median_seconds": seconds, "result_size": size,
                    "pass": seconds < TARGET_S if target else None}
        print(f"  {label:<40} {seconds * 1000:10.2f} {size:8}  {verdict}", flush=True)
    same_list = [e["uuid"] for e in cat.list_entries(dbs, tag="release")] == \
        [e["uuid"] for e in naive_list(db, "release")]
    same_lineage = [r.uuid for r in cat.resolve_lineage(dbs, tip).records] == \
        [r.uuid for r in naive_lineage(db, tip).records]
    print("\ntargets (10,000 entries: list --tag and 50-generation lineage resolution < 100 ms)")
    for key in ("list-api", "list-cli", "list-cli-json", "lineage-uuid", "lineage-block", "lineage-tree"):
        r = out[key]
        print(f"  {'PASS' if r['pass'] else 'FAIL'}  {r['label']:<40} {r['median_seconds'] * 1000:7.2f} ms")
    for ours, peer in (("list-api", "list-naive"), ("lineage-uuid", "lineage-naive")):
        ratio = H.ratio(out[peer]["median_seconds"], out[ours]["median_seconds"])
        print(f"  {out[peer]['label']:<46} {out[peer]['median_seconds'] * 1000:7.2f} ms: "
              f"{ratio:.1f}x the catalogue's time")
    print(f"  same answers as the naive scan: list {same_list}, lineage {same_lineage}")
    peak = H.peak_rss()
    print(f"\npeak RSS of this process (building included): {peak / 1e6:.0f} MB")
    return {"config": {"entries": args.entries, "repeat": args.repeat, "seed": args.seed,
                       **H.environment(), "sqlite": sqlite3.sqlite_version},
            "build": info, "rows": out, "same_answers": {"list": same_list, "lineage": same_lineage},
            "peak_rss_bytes": peak}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=10_000, help="registered checkpoints (default 10000)")
    p.add_argument("--repeat", type=int, default=7, help="runs per operation; the median is kept (default 7)")
    p.add_argument("--workdir", type=Path, help="folder for the catalogue (default: a temporary one)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.entries < CHAIN + 10:
        p.error(f"--entries must be at least {CHAIN + 10}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        out = run_benchmark(args, Path(tmp) / "catalogue.db")
    H.write_json(out, args.json)
    ok = all(r["pass"] is not False for r in out["rows"].values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
