#!/usr/bin/env python
"""How many bytes of a 1 GB ``.anc`` do ``anemoi-ckpt lineage`` and ``inspect`` read?

The issue's target: "``lineage`` and ``inspect`` on a 1 GB file read less than 1 MB of it (count
the bytes read, do not time)". The reader memory-maps the file, so ``read()`` counters miss most
of what it reads. This benchmark counts the bytes two ways, for each command run as a real
``anemoi-ckpt`` process:

- *resident*: the file is fsynced and evicted from the page cache (``posix_fadvise(DONTNEED)``,
  checked with ``mincore(2)``), the command runs, and the pages of the file now in the page cache
  are counted with ``mincore``; whatever the process read, through ``read()`` or the map, and
  whatever the kernel read ahead for it, is there;
- *read_bytes*: the block-device bytes the process caused to be read (``ru_inblock`` x 512 from
  ``os.wait4``: the kernel's ``/proc/PID/io`` ``read_bytes`` of the reaped child), read-ahead
  included. The interpreter's own files are warmed first, so this is (almost) all the file.

The peer is ``safetensors.safe_open(path).keys()`` (+ ``metadata()``) on the same weights as a
1 GB ``.safetensors``. A "what-if" row runs the same CLI with the reader's map advised
``MADV_RANDOM`` (patched in the child process only, nothing under anemoi_ckpt/ is changed): the
kernel then reads only the pages touched, which shows how much of the count is read-ahead.

Run from the repository root::

    .venv/bin/python benchmarks/bench_lineage_io.py                  # 1 GB, 3 repeats
    .venv/bin/python benchmarks/bench_lineage_io.py --size-gb 0.1    # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness as H  # noqa: E402
import bench_container as bc  # noqa: E402  (the AIFS-like layout)
from _harness import GB, MB, tensor_bytes  # noqa: E402

DEFAULT_WORKDIR = HERE / "out"
LIMIT = 1 << 20  # the target: < 1 MB (read as 1 MiB, the more lenient reading; 1e6 is printed too)
FILE = "lineage-model.anc"
ST_FILE = "lineage-model.safetensors"
ANCESTORS = ("lineage-ancestor-0.anc", "lineage-ancestor-1.anc", "lineage-ancestor-2.anc",
             "lineage-ancestor-b.anc")
GRID = 40320  # O96-like grid points: supporting arrays latitudes/longitudes, graph nodes


# --------------------------------------------------------------------------------------------
# The files (written once by a child, not measured)
# --------------------------------------------------------------------------------------------

def anemoi_metadata(grid: int, run: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An anemoi-training-like metadata dict (config, dataset, data indices, provenance) and the
    usual supporting arrays (latitudes, longitudes of the grid, float64)."""
    import numpy as np

    variables = ["10u", "10v", "2d", "2t", "lsm", "msl", "sdor", "skt", "slor", "sp", "tcw", "tp", "z",
                 *[f"{v}_{lev}" for v in ("q", "t", "u", "v", "w", "z")
                   for lev in (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)]]
    lat = np.linspace(-90, 90, grid)
    lon = np.linspace(0, 360, grid, endpoint=False)
    md = {
        "version": "2.0",
        "config": {"model": {"_target_": "anemoi.models.models.AnemoiModelEncProcDec",
                             "num_channels": bc.HIDDEN, "processor": {"num_layers": 16}},
                   "training": {"max_epochs": 10, "lr": {"rate": 6.25e-4}},
                   "data": {"resolution": "o96", "timestep": "6h"}},
        "seed": 42, "run_id": run,
        "dataset": {"data": {"variables": variables, "frequency": "6h",
                             "shape": [1, len(variables), 1, grid]}},
        "data_indices": {"data": {"data": {"input": {"name_to_index": {v: i for i, v in enumerate(variables)}}}}},
        "metadata_inference": {"dataset_names": ["data"], "task": "forecaster",
                               "data": {"timesteps": {"timestep": "6h"}}},
        "provenance_training": {"module_versions": {"anemoi.models": "0.5.0", "anemoi.training": "0.4.0",
                                                    "torch": "2.5.1"}},
        "timestamp": "2026-01-01T00:00:00",
    }
    return md, {"data": {"latitudes": lat, "longitudes": lon}}


def graph_tensors(grid: int, seed: int) -> dict[str, Any]:
    """An encoder/processor/decoder graph of about 20 MB: node coordinates and edges."""
    import torch

    g = torch.Generator().manual_seed(seed + 7)
    hidden = 10242  # icosahedral refinement 5
    enc, proc, dec = 4 * grid, 12 * hidden, 3 * grid
    return {
        "data.x": torch.rand(grid, 2, generator=g, dtype=torch.float64),
        "hidden.x": torch.rand(hidden, 2, generator=g, dtype=torch.float64),
        "data__to__hidden.edge_index": torch.randint(0, hidden, (2, enc), generator=g),
        "data__to__hidden.edge_attr": torch.rand(enc, 3, generator=g),
        "hidden__to__hidden.edge_index": torch.randint(0, hidden, (2, proc), generator=g),
        "hidden__to__hidden.edge_attr": torch.rand(proc, 3, generator=g),
        "hidden__to__data.edge_index": torch.randint(0, hidden, (2, dec), generator=g),
        "hidden__to__data.edge_attr": torch.rand(dec, 3, generator=g),
    }


def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """A lineage chain of small ancestors (create -> fine-tune -> convert, plus a second branch
    merged in), then the 1 GB file with both as parents, and the same weights as .safetensors."""
    import anemoi_ckpt
    import safetensors
    import safetensors.torch
    import torch

    w = args.workdir
    tiny = {"w": torch.zeros(4)}
    a0, a1, a2, ab = (str(w / n) for n in ANCESTORS)
    md_small, arrays_small = anemoi_metadata(64, "run-0")
    anemoi_ckpt.save(a0, tiny, kind="training", operation="create", anemoi_metadata=md_small,
                     supporting_arrays=arrays_small, parameters={"config": "o96-pretrain"})
    anemoi_ckpt.save(a1, tiny, kind="training", parents=[a0], operation="fine-tune",
                     parameters={"rollout": 12, "lr": 1e-5})
    anemoi_ckpt.save(a2, tiny, kind="inference", parents=[a1], operation="convert",
                     parameters={"to": "inference"})
    anemoi_ckpt.save(ab, tiny, kind="inference", parents=[a0], operation="fine-tune",
                     parameters={"branch": "ensemble-member-2"})

    sd = bc.make_state_dict(args.size_gb, args.seed)
    grid = max(1, round(GRID * args.size_gb))
    md, arrays = anemoi_metadata(grid, "run-3")
    graph = graph_tensors(grid, args.seed)
    t0 = time.perf_counter()
    anemoi_ckpt.save(w / FILE, sd, kind="inference", anemoi_metadata=md, supporting_arrays=arrays,
                     sections={"graph": graph}, parents=[a2, ab], operation="merge",
                     parameters={"method": "average", "weights": [0.5, 0.5]},
                     metadata={"description": "bench_lineage_io: AIFS-shaped model, 4 ancestors"})
    t_anc = time.perf_counter() - t0
    safetensors.torch.save_file(sd, str(w / ST_FILE),
                                metadata={"anemoi": json.dumps(md), "format": "pt"})
    return {"write_seconds": t_anc, "tensors": len(sd), "bytes": tensor_bytes(sd),
            "graph_bytes": tensor_bytes(graph), "grid": grid,
            "anemoi_ckpt": H.package_origin(),
            "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__}}


# --------------------------------------------------------------------------------------------
# The commands measured: each a real process
# --------------------------------------------------------------------------------------------

# What-if: the same CLI, with the reader's file map advised MADV_RANDOM (only in that process).
MADV_RANDOM_LAUNCHER = """\
import mmap, sys, types
import anemoi_ckpt.container.filebytes as reader  # where the map is made
def _map(*a, **k):
    m = mmap.mmap(*a, **k)
    m.madvise(mmap.MADV_RANDOM)
    return m
reader.mmap = types.SimpleNamespace(mmap=_map, ACCESS_COPY=mmap.ACCESS_COPY, ACCESS_READ=mmap.ACCESS_READ)
from anemoi_ckpt.cli.main import main
sys.argv = ["anemoi-ckpt", *sys.argv[1:]]
main()
"""

SAFETENSORS_PEER = """\
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="pt") as f:
    names = list(f.keys())
    meta = f.metadata()
print(len(names), len(meta or {}))
"""


def commands(args: argparse.Namespace) -> list[tuple[str, str, list[str], str]]:
    """(key, label, argv, file read) for every row."""
    cli = str(Path(sys.executable).with_name("anemoi-ckpt"))
    if not os.path.exists(cli):
        cli_argv = [sys.executable, "-m", "anemoi_ckpt"]
    else:
        cli_argv = [cli]
    anc, st = str(args.workdir / FILE), str(args.workdir / ST_FILE)
    rows = [(f"lineage-{fmt}", f"lineage --format {fmt}", [*cli_argv, "lineage", anc, "--format", fmt], anc)
            for fmt in ("tree", "json", "dot", "mermaid")]
    rows += [
        ("lineage-json-flag", "lineage --json", [*cli_argv, "lineage", anc, "--json"], anc),
        ("inspect", "inspect", [*cli_argv, "inspect", anc], anc),
        ("inspect-json", "inspect --json", [*cli_argv, "inspect", anc, "--json"], anc),
        ("peer-safetensors", "safetensors safe_open keys+metadata",
         [sys.executable, "-c", SAFETENSORS_PEER, st], st),
        ("whatif-lineage", "what-if MADV_RANDOM: lineage",
         [sys.executable, "-c", MADV_RANDOM_LAUNCHER, "lineage", anc], anc),
        ("whatif-inspect", "what-if MADV_RANDOM: inspect --json",
         [sys.executable, "-c", MADV_RANDOM_LAUNCHER, "inspect", anc, "--json"], anc),
    ]
    return rows


# --------------------------------------------------------------------------------------------
# Page-cache accounting
# --------------------------------------------------------------------------------------------

def tensor_payload_ranges(path: str) -> list[tuple[int, int]]:
    """[begin, end) of the tensor bytes of every tensor section (zip member ``*.safetensors``:
    data start + 8 + header length .. data end), found with zipfile and the length prefix only;
    for a plain .safetensors file, the one range after its header."""
    import struct

    out = []
    with open(path, "rb") as fh:
        if not zipfile.is_zipfile(fh):
            fh.seek(0)
            (n,) = struct.unpack("<Q", fh.read(8))
            return [(8 + n, os.fstat(fh.fileno()).st_size)]
        for info in zipfile.ZipFile(fh).infolist():
            if not info.filename.endswith(".safetensors"):
                continue
            fh.seek(info.header_offset)
            name_len, extra_len = struct.unpack("<HH", fh.read(30)[26:30])
            data = info.header_offset + 30 + name_len + extra_len
            fh.seek(data)
            (n,) = struct.unpack("<Q", fh.read(8))
            out.append((data + 8 + n, data + info.file_size))
    return out


def residency(path: str, payload: list[tuple[int, int]]) -> dict[str, int]:
    """Resident bytes of the whole file and of its tensor payload (mincore)."""
    size = os.path.getsize(path)
    total = H.resident_bytes(path, 0, size)
    in_payload = sum(H.resident_bytes(path, b, e) for b, e in payload)
    return {"total": total, "tensor_payload": in_payload, "other": total - in_payload}


def run_once(argv: list[str], path: str, payload: list[tuple[int, int]]) -> dict[str, Any]:
    # fsync first so no page is dirty (dirty pages survive POSIX_FADV_DONTNEED)
    H.evict(path, fsync=True)
    before = residency(path, payload)
    if before["total"]:
        time.sleep(0.2)
        H.evict(path, fsync=True)
        before = residency(path, payload)
    res = H.run_process(argv)
    time.sleep(0.5)  # read-ahead is asynchronous: let it land before counting
    after = residency(path, payload)
    return {"resident_before": before["total"], "resident": after["total"],
            "resident_tensor_payload": after["tensor_payload"], "resident_other": after["other"],
            "read_bytes": res.read_bytes, "stdout_bytes": len(res.stdout.encode()), "seconds": res.seconds}


def measure(args: argparse.Namespace, key: str, label: str, argv: list[str], path: str) -> dict[str, Any]:
    payload = tensor_payload_ranges(path)
    # Untimed warm-up with the file cached: the interpreter's own files (python, torch,
    # anemoi_ckpt) enter the page cache, so the measured runs' read_bytes are the file's.
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    # Bytes are counted, not timed: no wait for a quiet machine.
    samples = H.repeat_runs(lambda: run_once(argv, path, payload), args.repeat, None)
    med = {k: statistics.median(s[k] for s in samples) for k in
           ("resident_before", "resident", "resident_tensor_payload", "resident_other", "read_bytes",
            "stdout_bytes", "seconds")}
    ok = med["resident"] < LIMIT
    print(f"  {label:<40} {med['resident'] / 1024:9.0f} {med['resident_tensor_payload'] / 1024:9.0f} "
          f"{med['read_bytes'] / 1024:10.0f} {med['resident_before'] / 1024:7.0f}  "
          f"{'PASS' if ok else 'FAIL'}", flush=True)
    return {"label": label, "argv": [a if len(a) < 200 else "<script>" for a in argv], "file": path,
            "median": med, "samples": samples, "pass": ok}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    H.print_header(f"anemoi-ckpt lineage/inspect I/O benchmark: --size-gb {args.size_gb}, --repeat "
                   f"{args.repeat}, workdir {args.workdir}")
    print("\nwriting the files (once, not measured) ...", flush=True)
    prep = H.run_process([sys.executable, str(Path(__file__).resolve()), "--child", "prepare",
                          "--workdir", str(args.workdir), "--size-gb", str(args.size_gb),
                          "--seed", str(args.seed)]).last_json()
    anc, st = args.workdir / FILE, args.workdir / ST_FILE
    print(f"  anemoi_ckpt {prep['anemoi_ckpt']}; "
          + ", ".join(f"{k} {v}" for k, v in prep["versions"].items()))
    print(f"  {anc.name}: {anc.stat().st_size / GB:.3f} GB ({prep['tensors']} weight tensors, "
          f"{prep['bytes'] / GB:.3f} GB; graph {prep['graph_bytes'] / MB:.1f} MB; anemoi metadata with "
          f"2 x {prep['grid']} float64 supporting arrays; lineage: 4 ancestors, a merge of 2 branches)")
    print(f"  {st.name}: {st.stat().st_size / GB:.3f} GB (same weights)")
    ra = H.read_ahead_bytes(anc)
    print(f"  device read-ahead (read_ahead_kb): {ra / 1024:.0f} KiB" if ra else "  device read-ahead: unknown")
    print(f"\nper command: file evicted (fsync + POSIX_FADV_DONTNEED, checked with mincore), command run "
          f"as a process,\nthen mincore; median of {args.repeat}. KiB columns: resident = pages of the file "
          f"in the page cache afterwards;\npayload = of those, tensor bytes; read_bytes = the process's "
          f"block reads (ru_inblock x 512); before = resident before the run.")
    print(f"\n  {'command':<40} {'resident':>9} {'payload':>9} {'read_bytes':>10} {'before':>7}  < 1 MiB")
    rows = {}
    for key, label, argv, path in commands(args):
        rows[key] = measure(args, key, label, argv, path)
    print("\ntargets (lineage and inspect read < 1 MB of a 1 GB file; counted as page-cache residency)")
    targets = []
    for key in ("lineage-tree", "lineage-json", "lineage-dot", "lineage-mermaid", "lineage-json-flag",
                "inspect", "inspect-json"):
        m = rows[key]["median"]
        ok = m["resident"] < LIMIT and m["read_bytes"] < LIMIT
        targets.append({"target": f"{rows[key]['label']} < 1 MiB", "resident": m["resident"],
                        "read_bytes": m["read_bytes"], "pass": ok})
        print(f"  {'PASS' if ok else 'FAIL'}  {rows[key]['label']:<26} resident {m['resident'] / MB:6.2f} MB, "
              f"read_bytes {m['read_bytes'] / MB:6.2f} MB, of which tensor payload "
              f"{m['resident_tensor_payload'] / MB:.2f} MB")
    peer = rows["peer-safetensors"]["median"]
    print(f"  (peer) safetensors safe_open keys+metadata: resident {peer['resident'] / MB:.2f} MB, "
          f"read_bytes {peer['read_bytes'] / MB:.2f} MB")
    return {"config": {"size_gb": args.size_gb, "repeat": args.repeat, "seed": args.seed,
                       **H.environment(), "read_ahead_bytes": ra},
            "prepare": prep, "file_bytes": anc.stat().st_size, "rows": rows, "targets": targets}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_common_args(p, size_gb=1.0, size_help="size of the weights", workdir=DEFAULT_WORKDIR, quiet=False,
                      keep_help="keep the files afterwards")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    if args.child == "prepare":
        print(json.dumps(child_prepare(args)))
        return
    try:
        out = run_benchmark(args)
    finally:
        if not args.keep:
            for name in (FILE, ST_FILE, *ANCESTORS):
                (args.workdir / name).unlink(missing_ok=True)
    H.write_json(out, args.json)


if __name__ == "__main__":
    main()
