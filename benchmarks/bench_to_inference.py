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
import resource
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness as H  # noqa: E402
import bench_container as bc  # noqa: E402  (the AIFS-like grid)
import bench_convert as bconv  # noqa: E402  (the AIFS-like weights layout, the children's imports)
from _harness import GB, MB, Measurement, nbytes  # noqa: E402

DEFAULT_WORKDIR = HERE / "out"
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
            largest, weight_bytes = max(largest, nbytes(t)), weight_bytes + nbytes(t)
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
            "anemoi_ckpt": H.package_origin(),
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
    from anemoi_ckpt import Writer  # the class the converter writes with, patched in this child only

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = os.sysconf("SC_PAGE_SIZE")
    recent: deque[tuple[int, int]] = deque()
    original = Writer.add

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

    Writer.add = add  # type: ignore[method-assign]


def ours(args: argparse.Namespace, durable: bool, drop_behind: bool = False) -> tuple[float, dict[str, Any]]:
    from anemoi_ckpt.convert import engine

    if drop_behind:
        _drop_behind()
    src, dst = args.workdir / SRC, out_path(args, ".anc")
    run = lambda: engine.convert(src, dst, to="inference", durable=durable, progress=False)  # noqa: E731
    ru = resource.getrusage(resource.RUSAGE_SELF)
    seconds, report = H.profiled(run, args.profile and durable and not drop_behind,
                                 "convert --to inference (durable)", top=18, sorts=("tottime", "cumulative"))
    ru2 = resource.getrusage(resource.RUSAGE_SELF)  # CPU seconds: steadier than wall time under load
    cpu = ru2.ru_utime + ru2.ru_stime - ru.ru_utime - ru.ru_stime
    return seconds, {"cpu_s": cpu,
                     "tensors": report.tensors, "bytes": report.bytes, "verified": report.verified,
                     "verified_by": report.verified_by, "kind": report.kind,
                     "output_bytes": os.path.getsize(dst), "output": str(dst)}


def naive(args: argparse.Namespace, durable: bool) -> tuple[float, dict[str, Any]]:
    import safetensors.torch

    src, dst = args.workdir / WEIGHTS, out_path(args, ".safetensors")

    def run() -> int:
        sd = safetensors.torch.load_file(str(src))
        safetensors.torch.save_file(sd, str(dst))
        if durable:
            H.fsync_path(dst)
        return len(sd)

    seconds, n = H.timed(run)
    return seconds, {"tensors": n, "output_bytes": os.path.getsize(dst), "output": str(dst)}


CHILD_MODES = {
    "convert": lambda a: ours(a, True),
    "convert-nofsync": lambda a: ours(a, False),
    "whatif-drop-behind": lambda a: ours(a, True, drop_behind=True),
    "naive": lambda a: naive(a, False),
    "naive-fsync": lambda a: naive(a, True),
}


def child_main(args: argparse.Namespace) -> None:
    H.child_main(args.child, {mode: partial(fn, args) for mode, fn in CHILD_MODES.items()},
                 prepare=partial(child_prepare, args), imports=bconv.CHILD_IMPORTS)


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------

def run_child(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    flags = ["--workdir", str(args.workdir), "--size-gb", str(args.size_gb), "--seed", str(args.seed)]
    return H.run_child(__file__, mode, flags + (["--profile"] if args.profile else []), watch_memory=True)


def run_cp(args: argparse.Namespace, durable: bool) -> dict[str, Any]:
    """``cp weights out`` (coreutils, a process: start-up included), then os.fsync(out) from this
    process if durable; both inside the timed region."""
    return H.cp_sample(args.workdir / WEIGHTS, out_path(args, ".cp"), durable)


MODES = [
    ("convert", "ours: convert --to inference (durable)", SRC),
    ("convert-nofsync", "ours: durable=False", SRC),
    ("cp-fsync", "cp weights + fsync", WEIGHTS),
    ("cp", "cp weights (no fsync)", WEIGHTS),
    ("naive", "naive: load_file + save_file", WEIGHTS),
    ("naive-fsync", "naive + fsync", WEIGHTS),
    ("whatif-drop-behind", "what-if: ours + MADV_DONTNEED behind", SRC),
]


def measure(args: argparse.Namespace, mode: str, label: str, source: str, cache: str) -> Measurement:
    path = args.workdir / source

    def cold() -> dict[str, Any]:
        if cache != "cold":
            return {"source_resident_before": None}
        H.evict(path)
        return {"source_resident_before": H.resident_bytes(path, 0, path.stat().st_size)}

    run_one = partial(run_cp, args, mode == "cp-fsync") if mode.startswith("cp") else partial(run_child, args, mode)

    def note(m: Measurement) -> str:
        return (f"  peak RSS {m.median('peak_rss') / MB:.0f} MB (anon {m.median('peak_anon_sampled') / MB:.0f}, "
                f"file {m.median('peak_file_sampled') / MB:.0f})")

    return H.measure(mode, label, run_one, args.repeat, H.Quiet.of(args), group=cache, width=40, note=note,
                     before=cold)


def report(results: dict[str, Measurement], largest: int, cache: str) -> list[dict[str, Any]]:
    r = {k: m.seconds for k, m in results.items()}
    conv = results["convert"]
    limit = (largest + RSS_ALLOWANCE) / MB
    T = H.Target
    out = H.check_targets([
        T("time: ours (durable) / (cp + fsync)", r["convert"] / r["cp-fsync"], TIME_LIMIT),
        T("  same, neither durable: durable=False / cp", r["convert-nofsync"] / r["cp"], TIME_LIMIT),
        T("peak RSS (ru_maxrss) < largest tensor + 300 MB", conv.median("peak_rss") / MB, limit, unit="MB",
          strict=True),
        T("  (informative) anonymous peak < largest + 300 MB", conv.median("peak_anon_sampled") / MB, limit,
          unit="MB", strict=True),
        T("  (informative) peak RSS - RSS after imports", conv.rss_increase / MB, limit, unit="MB", strict=True),
        T("  (what-if) drop-behind peak RSS", results["whatif-drop-behind"].median("peak_rss") / MB, limit,
          unit="MB", strict=True),
    ], cache=cache)
    cpu = {k: statistics.median(x["extra"].get("cpu_s", float("nan")) for x in results[k].samples)
           for k in ("convert", "convert-nofsync")}
    print(f"  ours, CPU seconds (user + system, median): durable {cpu['convert']:.2f}, "
          f"durable=False {cpu['convert-nofsync']:.2f}")
    print(f"  (peer) naive load_file+save_file is {r['naive'] / r['convert-nofsync']:.2f}x the time of ours "
          f"(durable=False); naive+fsync {r['naive-fsync'] / r['convert']:.2f}x of ours (durable)")
    return out


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    H.print_header(f"anemoi-ckpt convert --to inference benchmark: --size-gb {args.size_gb}, --repeat "
                   f"{args.repeat}, caches {','.join(args.cache)}, workdir {args.workdir}")
    print(f"cp: {subprocess.run(['cp', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
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
    results: dict[str, dict[str, Measurement]] = {}
    targets = []
    for cache in args.cache:
        H.settle()
        if cache == "warm":
            for p in (src, weights):
                H.evict(p)
            H.warm_page_cache([src, weights])
            print("\nwarm page cache: both sources read once; runs read them from memory")
        else:
            print("\ncold page cache: the run's source evicted (posix_fadvise DONTNEED) before each run")
        results[cache] = {mode: measure(args, mode, label, source, cache) for mode, label, source in MODES}
        conv = results[cache]["convert"].samples[0]["extra"]
        print(f"  ours wrote {conv['tensors']} ({conv['bytes'] / GB:.3f} GB), {conv['verified']} tensors "
              f"verified by {conv['verified_by']}; output {conv['output_bytes'] / GB:.3f} GB, kind {conv['kind']}")
        print(f"targets, {cache} cache (largest tensor {largest / MB:.1f} MB)")
        targets += report(results[cache], largest, cache)
    print(H.background_line((s["background_cpu"] for c in results.values() for m in c.values() for s in m.samples),
                            args.max_background))
    return {"config": {"size_gb": args.size_gb, "repeat": args.repeat, "seed": args.seed, "cache": args.cache,
                       **H.environment()},
            "prepare": prep, "source_bytes": src.stat().st_size,
            "results": {c: {k: {**m.to_json(), "cache": c, "median": {
                key: m.median(key) for key in ("seconds", "peak_rss", "peak_anon_sampled", "peak_file_sampled",
                                               "rss_post_import")}} for k, m in ms.items()}
                        for c, ms in results.items()},
            "targets": targets}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_common_args(p, size_gb=3.0, size_help="size of the training .anc: 1/3 weights, 2/3 AdamW moments",
                      workdir=DEFAULT_WORKDIR,
                      keep_help="keep the source files afterwards (and reuse them on the next --keep run)",
                      profile_help="the durable convert")
    p.add_argument("--cache", nargs="+", choices=("warm", "cold"), default=["warm", "cold"],
                   help="page-cache states to measure (default: warm cold)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.child and shutil.which("cp") is None:
        raise SystemExit("needs coreutils cp")

    def cleanup() -> None:
        for suffix in (".anc", ".cp", ".safetensors"):
            out_path(args, suffix).unlink(missing_ok=True)
        if not args.keep:
            for name in (SRC, WEIGHTS, "toinf-prepare.json"):
                (args.workdir / name).unlink(missing_ok=True)

    H.main_flow(args, lambda: child_main(args), lambda: run_benchmark(args), cleanup)


if __name__ == "__main__":
    main()
