#!/usr/bin/env python
"""``convert --to inference`` of a 3 GB training ``.anc``: does it stream, and how close to ``cp``?

The issue's target: "``convert --to inference`` of a 3 GB training ``.anc`` streams: peak RSS under
the largest tensor plus 300 MB, time within 1.3x of copying the weights bytes with ``cp``."

A training ``.anc`` is written once (not measured) with ``anemoi_ckpt.Writer(kind="training")``:
about 1 GB of fp32 AIFS-like weights (bench_convert's layout: 1024-channel transformer blocks and
two (40320, 256) per-grid-node tensors, the largest at 41 MB), the AdamW moments
``<param>.exp_avg`` / ``<param>.exp_avg_sq`` in an ``optimizer`` section (2 GB), and a small anemoi
metadata block. Its ``weights.safetensors`` member (exactly the bytes an inference file's weights
section holds) is also copied out to a standalone file: the ``cp`` baseline and the naive peer's
input. Then, each in a fresh process, median of ``--repeat``, with the source warm in the page
cache and again cold (evicted with ``posix_fadvise(DONTNEED)`` before each run):

- ours: ``anemoi_ckpt.convert.convert(train.anc, inf.anc, to="inference")``, durable (default)
  and ``durable=False``;
- cp: ``cp weights.safetensors out`` then ``os.fsync(out)`` (both timed), and ``cp`` alone;
- naive: ``safetensors.torch.load_file(weights.safetensors)`` + ``save_file`` (+ fsync);
- what-if (informative): ours with each source tensor's pages dropped from the process's map
  (``madvise(MADV_DONTNEED)``) a few tensors after it was written, patched in that child only.

Peak RSS is the child's ``ru_maxrss`` (``os.wait4``), plus the sampled peaks of ``RssAnon`` and
``RssFile``. See benchmarks/README.md.

Run from the repository root::

    .venv/bin/python benchmarks/bench_to_inference.py                          # 3 GB, 3 repeats
    .venv/bin/python benchmarks/bench_to_inference.py --size-gb 0.3 --repeat 1 # quick check
    .venv/bin/python benchmarks/bench_to_inference.py --profile                # + cProfile of ours
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_container as bc  # noqa: E402
import bench_convert as bcv  # noqa: E402  (the shared child-process entry)  (quiet machine, eviction, page-cache helpers)
import bench_convert as bconv  # noqa: E402  (AIFS-like weights layout, process memory watcher)

DEFAULT_WORKDIR = HERE / "out"
MB = 1e6
GB = 1e9
RSS_ALLOWANCE = 300 * 10**6  # the target: peak RSS < largest tensor + 300 MB
TIME_LIMIT = 1.3  # the target: time <= 1.3 x cp of the weights bytes
SRC = "toinf-train.anc"
WEIGHTS = "toinf-weights.safetensors"


def out_path(args: argparse.Namespace, suffix: str) -> Path:
    return args.workdir / f"toinf-output{suffix}"


# --------------------------------------------------------------------------------------------
# The source (written once by a child, not measured)
# --------------------------------------------------------------------------------------------

def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Stream the training .anc tensor by tensor (memory: one tensor), then copy its weights
    member out to a standalone .safetensors."""
    import anemoi_ckpt
    import safetensors
    import torch

    sys.path.insert(0, str(HERE))
    from bench_lineage_io import anemoi_metadata

    spec = bconv.weights_spec(args.size_gb / 3)
    md, arrays = anemoi_metadata(bc.GRID, "toinf-run")
    src = args.workdir / SRC
    t0 = time.perf_counter()
    largest = weight_bytes = 0
    with anemoi_ckpt.Writer(src, kind="training", anemoi_metadata=md, supporting_arrays=arrays,
                            operation="create", parameters={"bench": "to_inference"}) as w:
        for i, (name, shape) in enumerate(spec):
            t = bconv._randn(shape, args.seed * 1_000_003 + 3 * i, 0.02)
            largest, weight_bytes = max(largest, bconv.nbytes(t)), weight_bytes + bconv.nbytes(t)
            w.add(name, t)
        for i, (name, shape) in enumerate(spec):
            base = args.seed * 1_000_003 + 3 * i
            w.add(f"{name}.exp_avg", bconv._randn(shape, base + 1, 1e-4), section="optimizer")
            w.add(f"{name}.exp_avg_sq", bconv._randn(shape, base + 2, 1e-4).square_(), section="optimizer")
    seconds = time.perf_counter() - t0
    begin, size = member_range(str(src), "weights.safetensors")
    with open(src, "rb") as fi, open(args.workdir / WEIGHTS, "wb") as fo:
        os.copy_file_range(fi.fileno(), fo.fileno(), size, begin, 0) if size else None
        copied = os.fstat(fo.fileno()).st_size
        while copied < size:  # copy_file_range may copy less than asked
            copied += os.copy_file_range(fi.fileno(), fo.fileno(), size - copied, begin + copied, copied)
    return {"write_seconds": seconds, "parameters": len(spec), "weight_bytes": weight_bytes,
            "largest_tensor_bytes": largest, "weights_member_bytes": size,
            "anemoi_ckpt": f"{anemoi_ckpt.__version__} from {Path(anemoi_ckpt.__file__).parent}",
            "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__}}


def member_range(path: str, suffix: str) -> tuple[int, int]:
    """(data offset, size) of the stored zip member whose name ends with ``suffix``."""
    import struct

    with open(path, "rb") as fh:
        info = next(i for i in zipfile.ZipFile(fh).infolist() if i.filename.endswith(suffix))
        fh.seek(info.header_offset)
        name_len, extra_len = struct.unpack("<HH", fh.read(30)[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


# --------------------------------------------------------------------------------------------
# Child modes (fresh interpreter each): return (seconds, extra)
# --------------------------------------------------------------------------------------------

def _drop_behind(lag: int = 8) -> None:
    """What-if: after each Writer.add, drop the pages of the tensor added ``lag`` adds ago from
    this process's mappings (madvise MADV_DONTNEED; the page cache keeps them). The lag leaves
    the writer's hashing threads time to finish with a tensor before it is dropped; a page they
    still need would only be faulted in again."""
    import anemoi_ckpt.writer as wmod

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = os.sysconf("SC_PAGE_SIZE")
    recent: deque[tuple[int, int]] = deque()
    original = wmod.Writer.add

    def add(self: Any, name: str, tensor: Any, **kw: Any) -> None:
        original(self, name, tensor, **kw)
        n = tensor.numel() * tensor.element_size()
        if n:
            recent.append((tensor.data_ptr(), n))
        while len(recent) > lag:
            ptr, n = recent.popleft()
            lo, hi = (ptr + page - 1) // page * page, (ptr + n) // page * page  # whole pages only
            if hi > lo:
                libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED

    wmod.Writer.add = add


def ours(args: argparse.Namespace, durable: bool, drop_behind: bool = False) -> tuple[float, dict[str, Any]]:
    from anemoi_ckpt.convert import engine

    if drop_behind:
        _drop_behind()
    src, dst = args.workdir / SRC, out_path(args, ".anc")
    run = lambda: engine.convert(src, dst, to="inference", durable=durable, progress=False)  # noqa: E731
    if args.profile and durable and not drop_behind:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        seconds, report = bc.timed(lambda: prof.runcall(run))
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(18)
            print(f"--- cProfile of convert --to inference (durable), by {key} ---\n{buf.getvalue()}",
                  file=sys.stderr)
    else:
        seconds, report = bc.timed(run)
    return seconds, {"tensors": report.tensors, "bytes": report.bytes, "verified": report.verified,
                     "verified_by": report.verified_by, "kind": report.kind,
                     "output_bytes": os.path.getsize(dst), "output": str(dst)}


def naive(args: argparse.Namespace, durable: bool) -> tuple[float, dict[str, Any]]:
    import safetensors.torch

    src, dst = args.workdir / WEIGHTS, out_path(args, ".safetensors")

    def run() -> int:
        sd = safetensors.torch.load_file(str(src))
        safetensors.torch.save_file(sd, str(dst))
        if durable:
            bconv.fsync_path(dst)
        return len(sd)

    seconds, n = bc.timed(run)
    return seconds, {"tensors": n, "output_bytes": os.path.getsize(dst), "output": str(dst)}


CHILD_MODES = {
    "convert": lambda a: ours(a, True),
    "convert-nofsync": lambda a: ours(a, False),
    "whatif-drop-behind": lambda a: ours(a, True, drop_behind=True),
    "naive": lambda a: naive(a, False),
    "naive-fsync": lambda a: naive(a, True),
}


def child_main(args: argparse.Namespace) -> None:
    bcv.child_entry(args, CHILD_MODES, child_prepare, ())


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------

def run_child(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--workdir", str(args.workdir),
           "--size-gb", str(args.size_gb), "--seed", str(args.seed)]
    if args.profile:
        cmd.append("--profile")
    _, stdout, mem = bconv.run_process(cmd)
    sample = json.loads(stdout.strip().splitlines()[-1])
    sample.update(mem)
    return sample


def run_cp(args: argparse.Namespace, durable: bool) -> dict[str, Any]:
    """``cp weights out`` (coreutils, a process: start-up included), then os.fsync(out) from this
    process if durable; both inside the timed region."""
    dst = out_path(args, ".cp")
    t0 = time.perf_counter()
    _, _, mem = bconv.run_process(["cp", str(args.workdir / WEIGHTS), str(dst)])
    if durable:
        bconv.fsync_path(dst)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_post_import": 0, "extra": {"output": str(dst)}, **mem}


MODES = [
    ("convert", "ours: convert --to inference (durable)", SRC),
    ("convert-nofsync", "ours: durable=False", SRC),
    ("cp-fsync", "cp weights + fsync", WEIGHTS),
    ("cp", "cp weights (no fsync)", WEIGHTS),
    ("naive", "naive: load_file + save_file", WEIGHTS),
    ("naive-fsync", "naive + fsync", WEIGHTS),
    ("whatif-drop-behind", "what-if: ours + MADV_DONTNEED behind", SRC),
]


def measure(args: argparse.Namespace, mode: str, label: str, source: str, cache: str) -> dict[str, Any]:
    samples = []
    for _ in range(args.repeat):
        bc.settle()  # flush the previous run's write-back (untimed)
        if cache == "cold":
            bc.evict(str(args.workdir / source))
            resident = bc.resident_bytes(str(args.workdir / source), 0, (args.workdir / source).stat().st_size)
        else:
            resident = None
        load = bc.wait_for_quiet(args)
        sample = run_cp(args, durable=mode == "cp-fsync") if mode.startswith("cp") else run_child(args, mode)
        sample["background_cpu"] = load
        sample["source_resident_before"] = resident
        output = sample["extra"].pop("output", None)
        if output:
            os.unlink(output)
        samples.append(sample)
    med = {k: statistics.median(s[k] for s in samples)
           for k in ("seconds", "peak_rss", "peak_anon_sampled", "peak_file_sampled", "rss_post_import")}
    shown = ", ".join(f"{s['seconds']:.2f}" for s in samples)
    print(f"  {label:<40} {med['seconds']:7.2f} s  peak RSS {med['peak_rss'] / MB:6.0f} MB "
          f"(anon {med['peak_anon_sampled'] / MB:5.0f}, file {med['peak_file_sampled'] / MB:5.0f})  "
          f"samples: {shown}", flush=True)
    return {"label": label, "cache": cache, "median": med, "samples": samples}


def report(results: dict[str, dict[str, Any]], largest: int, cache: str) -> list[dict[str, Any]]:
    r = {k: v["median"] for k, v in results.items()}
    limit = largest + RSS_ALLOWANCE
    rows = [
        ("time: ours (durable) / (cp + fsync)", r["convert"]["seconds"] / r["cp-fsync"]["seconds"], TIME_LIMIT, "x"),
        ("  same, neither durable: durable=False / cp", r["convert-nofsync"]["seconds"] / r["cp"]["seconds"],
         TIME_LIMIT, "x"),
        ("peak RSS (ru_maxrss) < largest tensor + 300 MB", r["convert"]["peak_rss"] / MB, limit / MB, "MB"),
        ("  (informative) anonymous peak < largest + 300 MB", r["convert"]["peak_anon_sampled"] / MB,
         limit / MB, "MB"),
        ("  (informative) peak RSS - RSS after imports", (r["convert"]["peak_rss"] - r["convert"]["rss_post_import"])
         / MB, limit / MB, "MB"),
        ("  (what-if) drop-behind peak RSS", r["whatif-drop-behind"]["peak_rss"] / MB, limit / MB, "MB"),
    ]
    out = []
    for label, value, lim, unit in rows:
        ok = value <= lim if unit == "x" else value < lim
        out.append({"cache": cache, "target": label.strip(), "value": round(value, 3), "limit": round(lim, 3),
                    "unit": unit, "pass": ok})
        shown = f"{value:.0f} MB (limit {lim:.0f} MB)" if unit == "MB" else f"{value:.2f}x (limit {lim:.2f}x)"
        print(f"  {'PASS' if ok else 'FAIL'}  {label:<52} {shown}")
    naive_ratio = r["naive"]["seconds"] / r["convert-nofsync"]["seconds"]
    print(f"  (peer) naive load_file+save_file is {naive_ratio:.2f}x the time of ours (durable=False); "
          f"naive+fsync {r['naive-fsync']['seconds'] / r['convert']['seconds']:.2f}x of ours (durable)")
    return out


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"anemoi-ckpt convert --to inference benchmark: --size-gb {args.size_gb}, --repeat {args.repeat}, "
          f"caches {','.join(args.cache)}, workdir {args.workdir}")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}; "
          f"cp: {subprocess.run(['cp', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    print("\nwriting the training .anc (once, not measured) ...", flush=True)
    src, weights = args.workdir / SRC, args.workdir / WEIGHTS
    meta = args.workdir / "toinf-prepare.json"
    key = {"size_gb": args.size_gb, "seed": args.seed}
    old = json.loads(meta.read_text()) if meta.exists() and src.exists() and weights.exists() else {}
    if old.get("key") == key and old.get("bytes") == src.stat().st_size:
        prep = old["prepare"]
        print("  reusing the source written by an earlier --keep run")
    else:
        prep = run_child(args, "prepare")
        prep = {k: v for k, v in prep.items() if not k.startswith("peak_")}
        meta.write_text(json.dumps({"key": key, "bytes": src.stat().st_size, "prepare": prep}))
    largest = prep["largest_tensor_bytes"]
    imported = subprocess.run([sys.executable, "-c", "import anemoi_ckpt, os; "
                               "print(anemoi_ckpt.__version__, 'from', os.path.dirname(anemoi_ckpt.__file__))"],
                              capture_output=True, text=True, cwd=HERE).stdout.strip()
    print(f"  measured children import anemoi_ckpt {imported}; "
          + ", ".join(f"{k} {v}" for k, v in prep["versions"].items()))
    print(f"  {src.name}: {src.stat().st_size / GB:.3f} GB (training; {prep['parameters']} parameters, "
          f"weights {prep['weight_bytes'] / GB:.3f} GB + exp_avg + exp_avg_sq); largest tensor "
          f"{largest / MB:.1f} MB")
    print(f"  {weights.name}: {weights.stat().st_size / GB:.3f} GB (the weights member, copied out)")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    targets = []
    for cache in args.cache:
        bc.settle()
        if cache == "warm":
            for p in (src, weights):
                bc.evict(str(p))
            bc.warm_page_cache([src, weights])
            print(f"\nwarm page cache: both sources read once; runs read them from memory")
        else:
            print(f"\ncold page cache: the run's source evicted (posix_fadvise DONTNEED) before each run")
        results[cache] = {mode: measure(args, mode, label, source, cache) for mode, label, source in MODES}
        conv = results[cache]["convert"]["samples"][0]["extra"]
        print(f"  ours wrote {conv['tensors']} ({conv['bytes'] / GB:.3f} GB), {conv['verified']} tensors "
              f"verified by {conv['verified_by']}; output {conv['output_bytes'] / GB:.3f} GB, kind {conv['kind']}")
        print(f"targets, {cache} cache (largest tensor {largest / MB:.1f} MB)")
        targets += report(results[cache], largest, cache)
    busiest = max(s["background_cpu"] for c in results.values() for m in c.values() for s in m["samples"])
    print(f"\nbackground CPU load before measurements: max {busiest:.0%} of the machine"
          + ("  WARNING: something else was running; timings are unreliable, rerun on a quiet machine"
             if busiest > args.max_background else " (quiet)"))
    return {"config": {"size_gb": args.size_gb, "repeat": args.repeat, "seed": args.seed, "cache": args.cache,
                       "cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version()},
            "prepare": prep, "source_bytes": src.stat().st_size, "results": results, "targets": targets}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=3.0,
                   help="size of the training .anc: 1/3 weights, 2/3 AdamW moments (default 3.0)")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is kept (default 3)")
    p.add_argument("--cache", nargs="+", choices=("warm", "cold"), default=["warm", "cold"],
                   help="page-cache states to measure (default: warm cold)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help=f"folder for the source and outputs (default {DEFAULT_WORKDIR})")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write every sample and result here")
    p.add_argument("--max-background", type=float, default=0.1, metavar="FRACTION",
                   help="before each run, wait until other processes use less than this fraction "
                        "of the CPUs (default 0.1)")
    p.add_argument("--quiet-timeout", type=float, default=120.0, metavar="S",
                   help="longest wait for a quiet machine before running anyway (default 120)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic tensors (default 0)")
    p.add_argument("--profile", action="store_true",
                   help="run the durable convert under cProfile and print its top functions (slower)")
    p.add_argument("--keep", action="store_true",
                   help="keep the source files afterwards (and reuse them on the next --keep run)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    if args.child:
        child_main(args)
        return
    if shutil.which("cp") is None:
        raise SystemExit("needs coreutils cp")
    try:
        out = run_benchmark(args)
    finally:
        for suffix in (".anc", ".cp", ".safetensors"):
            out_path(args, suffix).unlink(missing_ok=True)
        if not args.keep:
            for name in (SRC, WEIGHTS, "toinf-prepare.json"):
                (args.workdir / name).unlink(missing_ok=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
