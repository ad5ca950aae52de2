#!/usr/bin/env python
"""Benchmark the ``.anc`` container against safetensors and torch.save/torch.load.

A synthetic, AIFS-shaped fp32 state dict (about 250 M parameters, about 1 GB at ``--size-gb 1``)
is written once per format into a work folder; then every measurement runs in a fresh child
process (this script with ``--child MODE``), so no measurement inherits another's allocator state,
imports or page mappings. Each child reports wall time of the operation only (imports excluded),
its peak RSS and its RSS right after imports. Every measurement is repeated ``--repeat`` times and
the median is reported. See benchmarks/README.md for what exactly is measured and why.

Run from the repository root::

    .venv/bin/python benchmarks/bench_container.py                 # 1 GB, 3 repeats
    .venv/bin/python benchmarks/bench_container.py --size-gb 0.1   # quick check
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import struct
import sys
import time
import zipfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness as H  # noqa: E402
from _harness import GB, MB, PAGE, Measurement, tensor_bytes, timed  # noqa: E402

DEFAULT_WORKDIR = HERE / "out"

# The reference files every load / inspect / verify measurement reads.
FILES = {"anc": "model.anc", "safetensors": "model.safetensors", "pt": "model.pt"}

TOUCH_MODES = ("page", "full")


# --------------------------------------------------------------------------------------------
# The synthetic state dict
# --------------------------------------------------------------------------------------------

HIDDEN = 1024
MLP = 4 * HIDDEN
GRID = 40320  # rows of AIFS' per-node trainable tensors (the O96-ish grid size used in the issue)
BLOCKS_AT_1GB = 13  # 13 transformer blocks + 2 grid tensors = 246 M params, 0.99 GB in fp32


def spec(size_gb: float) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of an AIFS-like state dict of about ``size_gb`` GB (fp32).

    Block count and grid rows scale linearly with ``size_gb`` so that the small sizes keep the
    same mix of big and small tensors. At 1.0: 277 tensors, 246.4 M parameters.
    """
    blocks = max(1, round(BLOCKS_AT_1GB * size_gb))
    rows = max(1, round(GRID * size_gb))
    out: list[tuple[str, tuple[int, ...]]] = [
        ("model.model.node_attributes.trainable_tensors.data", (rows, HIDDEN)),
        ("model.model.node_attributes.trainable_tensors.hidden", (rows, HIDDEN)),
    ]
    for i in range(blocks):
        p = f"model.model.processor.proc.{i}.blocks.0"
        for lin in ("lin_q", "lin_k", "lin_v", "projection"):
            out += [(f"{p}.attention.{lin}.weight", (HIDDEN, HIDDEN)), (f"{p}.attention.{lin}.bias", (HIDDEN,))]
        out += [(f"{p}.mlp.0.weight", (MLP, HIDDEN)), (f"{p}.mlp.0.bias", (MLP,)),
                (f"{p}.mlp.2.weight", (HIDDEN, MLP)), (f"{p}.mlp.2.bias", (HIDDEN,))]
        for norm in ("layer_norm_attention", "layer_norm_mlp", "attention.q_norm", "attention.k_norm"):
            out += [(f"{p}.{norm}.weight", (HIDDEN,)), (f"{p}.{norm}.bias", (HIDDEN,))]
        out.append((f"{p}.gate", (HIDDEN,)))
    out += [("model.model.decoder.layer_norm.weight", (HIDDEN,)),
            ("model.model.decoder.layer_norm.bias", (HIDDEN,))]
    return out


def make_state_dict(size_gb: float, seed: int) -> dict[str, Any]:
    """Deterministic fp32 tensors: one generator per tensor, seeded from (seed, index), so a
    tensor's values do not depend on how many came before it. Random (not zeros/ones) so that
    every page is really allocated and nothing compresses or dedups."""
    import torch

    out = {}
    for i, (name, shape) in enumerate(spec(size_gb)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out[name] = torch.randn(shape, generator=g, dtype=torch.float32).mul_(0.02)
    return out


def touch(tensors: Mapping[str, Any], mode: str) -> float:
    """Force every tensor's memory to be really present, the same way for every method.

    ``page``: sum one element per 4 KiB of each tensor (``t.view(-1)[::4096 // itemsize]``), so
    every page is faulted in / read without adding a full-memory-bandwidth pass that is the
    same for all methods. ``full``: ``t.sum()`` reads every byte.
    """
    total = 0.0
    for t in tensors.values():
        if mode == "full":
            total += float(t.sum())
        else:
            total += float(t.reshape(-1)[:: max(1, PAGE // t.element_size())].sum())
    return total


def warm_torch() -> None:
    """torch's one-time set-up in a fresh process (its first ``frombuffer``/``view``/``reshape``,
    the first strided and the first parallel ``sum``: about 0.9 ms on the 2-core machine), run
    before the clock like the imports: otherwise every row pays it once, and it alone is a third
    of what opening a file and reading 10% of its tensors costs. Same touch code as the rows."""
    import torch

    buf = bytearray(1 << 20)  # 1 MB: a parallel sum (above torch's grain size), little RSS
    t = torch.frombuffer(buf, dtype=torch.uint8).view(torch.float32).reshape(-1, 1024)
    touch({"w": t}, "page")
    touch({"w": t}, "full")


# --------------------------------------------------------------------------------------------
# Child modes: each returns (seconds, extra) and is run in a fresh interpreter
# --------------------------------------------------------------------------------------------

class Ctx:
    """What a child knows: its work folder, the dict's size and seed, the touch mode."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.workdir = Path(args.workdir)
        self.size_gb = args.size_gb
        self.seed = args.seed
        self.touch = args.touch
        self.keep: list[Any] = []  # results kept alive until memory has been read

    def file(self, fmt: str) -> str:
        return str(self.workdir / FILES[fmt])


def child_prepare(ctx: Ctx) -> dict[str, Any]:
    """Write the reference files once (not a measurement; times are informational)."""
    import anemoi_ckpt
    import safetensors
    import safetensors.torch
    import torch

    sd = make_state_dict(ctx.size_gb, ctx.seed)
    times = {
        "anc": timed(lambda: anemoi_ckpt.save(ctx.file("anc"), sd))[0],
        "safetensors": timed(lambda: safetensors.torch.save_file(sd, ctx.file("safetensors")))[0],
        "pt": timed(lambda: torch.save(sd, ctx.file("pt")))[0],
    }
    return {"write_seconds": times, "tensors": len(sd), "bytes": tensor_bytes(sd),
            "anemoi_ckpt": H.package_origin(),
            "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__},
            "parameters": sum(t.numel() for t in sd.values())}


def load_anc_full(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    import anemoi_ckpt

    def run() -> int:
        ck = anemoi_ckpt.open(ctx.file("anc"))
        sd = ck.state_dict()
        touch(sd, ctx.touch)
        ctx.keep += [ck, sd]
        return tensor_bytes(sd)

    seconds, nbytes = timed(run)
    return seconds, {"bytes_loaded": nbytes}


def load_anc_lazy(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    """Open and materialise every 10th name (sorted): 10% of the tensors, not of the bytes."""
    import anemoi_ckpt

    def run() -> tuple[int, int]:
        ck = anemoi_ckpt.open(ctx.file("anc"))
        mapping = ck.tensors("weights")
        subset = {n: mapping[n] for n in sorted(mapping)[::10]}
        touch(subset, ctx.touch)
        ctx.keep += [ck, subset]
        return len(subset), tensor_bytes(subset)

    seconds, (count, nbytes) = timed(run)
    return seconds, {"tensors_loaded": count, "bytes_loaded": nbytes}


def load_safetensors(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    import safetensors.torch

    def run() -> int:
        sd = safetensors.torch.load_file(ctx.file("safetensors"))
        touch(sd, ctx.touch)
        ctx.keep.append(sd)
        return tensor_bytes(sd)

    seconds, nbytes = timed(run)
    return seconds, {"bytes_loaded": nbytes}


def _load_torch(ctx: Ctx, mmap_: bool) -> tuple[float, dict[str, Any]]:
    import torch

    def run() -> int:
        sd = torch.load(ctx.file("pt"), weights_only=True, mmap=mmap_)
        touch(sd, ctx.touch)
        ctx.keep.append(sd)
        return tensor_bytes(sd)

    seconds, nbytes = timed(run)
    return seconds, {"bytes_loaded": nbytes}


def _save(ctx: Ctx, writer: Callable[[dict[str, Any], str], Any], suffix: str) -> tuple[float, dict[str, Any]]:
    """Tensors are created before the clock starts; only the write is timed. The output goes to
    the work folder (the parent deletes it and syncs the disk between runs)."""
    sd = make_state_dict(ctx.size_gb, ctx.seed)
    before = H.rss_now()
    out = str(ctx.workdir / f"save-output{suffix}")
    seconds, _ = timed(lambda: writer(sd, out))
    ctx.keep.append(sd)
    return seconds, {"tensor_bytes": tensor_bytes(sd), "rss_before_save": before, "output": out}


def save_anc(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    import anemoi_ckpt

    return _save(ctx, lambda sd, p: anemoi_ckpt.save(p, sd), ".anc")


def save_anc_nofsync(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    """anemoi_ckpt.save(durable=False): still atomic (rename), no fsync, like safetensors."""
    import anemoi_ckpt

    return _save(ctx, lambda sd, p: anemoi_ckpt.save(p, sd, durable=False), ".anc")


def save_safetensors(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    import safetensors.torch

    return _save(ctx, lambda sd, p: safetensors.torch.save_file(sd, p), ".safetensors")


def save_safetensors_fsync(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    """safetensors plus the fsync that anemoi_ckpt.save always does (it commits atomically and
    durably): the like-for-like comparison for durability."""
    import safetensors.torch

    def write(sd: dict[str, Any], p: str) -> None:
        safetensors.torch.save_file(sd, p)
        H.fsync_path(p)

    return _save(ctx, write, ".safetensors")


def save_torch(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    import torch

    return _save(ctx, lambda sd, p: torch.save(sd, p), ".pt")


def anc_inspect(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    """What ``anemoi-ckpt inspect --json`` does, minus interpreter start-up and imports."""
    import anemoi_ckpt
    from anemoi_ckpt.summary import summarize

    def run() -> int:
        with anemoi_ckpt.open(ctx.file("anc")) as ck:
            return len(json.dumps(summarize(ck)))

    seconds, n = timed(run)
    return seconds, {"json_chars": n}


def anc_verify(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    """What ``anemoi-ckpt verify --json`` does, minus interpreter start-up and imports."""
    import anemoi_ckpt

    def run() -> bool:
        with anemoi_ckpt.open(ctx.file("anc")) as ck:
            return ck.verify().ok

    seconds, ok = timed(run)
    if not ok:
        raise SystemExit("verify reported damage on a freshly written file")
    return seconds, {"file_bytes": os.path.getsize(ctx.file("anc"))}


def hashlib_sha256(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    """One sha256 stream over the whole file (OpenSSL, SHA-NI where the CPU has it): the fastest
    single-threaded hash of the file, a stricter yardstick than coreutils sha256sum."""
    import hashlib

    def run() -> str:
        with open(ctx.file("anc"), "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return hashlib.sha256(mm).hexdigest()

    seconds, _ = timed(run)
    return seconds, {"file_bytes": os.path.getsize(ctx.file("anc"))}


# --------------------------------------------------------------------------------------------
# Does inspect read tensor bytes? Page-cache residency with mincore(2).
# --------------------------------------------------------------------------------------------

def weights_payload_range(path: str) -> tuple[int, int]:
    """File offsets [begin, end) of the tensor bytes of the weights section, found with zipfile
    and the safetensors length prefix only (independently of anemoi_ckpt's reader)."""
    with open(path, "rb") as fh:
        info = next(i for i in zipfile.ZipFile(fh).infolist() if i.filename.endswith("weights.safetensors"))
        fh.seek(info.header_offset)
        local = fh.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        data = info.header_offset + 30 + name_len + extra_len
        fh.seek(data)
        (header_len,) = struct.unpack("<Q", fh.read(8))
    return data + 8 + header_len, data + info.file_size


def payload_residency(path: str, begin: int, end: int, edge: int) -> dict[str, int]:
    """Resident payload bytes, split into the ``edge`` bytes at either end and the interior.

    A page fault on a file mapping makes the kernel read a whole window around it, and one or
    two asynchronous read-ahead windows after it; so reading the safetensors header (just before
    the payload) or the manifest (just after it) pulls in payload pages that nobody asked for.
    ``edge`` (4 x the device's read-ahead) bounds that; the interior is out of its reach.
    """
    time.sleep(0.5)  # read-ahead I/O is asynchronous: let it land before counting
    total = H.resident_bytes(path, begin, end)
    lo, hi = min(end, begin + edge), max(begin, end - edge)
    interior = H.resident_bytes(path, lo, hi)
    return {"total": total, "interior": interior, "edges": total - interior}


def inspect_residency(ctx: Ctx) -> tuple[float, dict[str, Any]]:
    """Evict the .anc, run inspect, count tensor-payload bytes that came into the page cache.

    mmap hides reads from /proc/self/io, but not from the page cache: any tensor byte inspect
    read (through read() or a mapping) must be resident afterwards. The control then reads one
    whole tensor to show the method does see reads.
    """
    import anemoi_ckpt
    from anemoi_ckpt.summary import summarize

    path = ctx.file("anc")
    begin, end = weights_payload_range(path)
    ra = H.read_ahead_bytes(path)
    edge = 4 * (ra if ra is not None else 8 << 20)
    H.evict(path)
    before = payload_residency(path, begin, end, edge)
    with anemoi_ckpt.open(path) as ck:
        seconds, _ = timed(lambda: json.dumps(summarize(ck)))
        after_inspect = payload_residency(path, begin, end, edge)
        mapping = ck.tensors("weights")
        # The largest tensor that is neither first nor last in the file: away from the edges.
        inner = sorted(mapping.entries.values(), key=lambda t: t.begin)[1:-1] or list(mapping.entries.values())
        probe = max(inner, key=lambda t: t.nbytes).name
        touch({probe: mapping[probe]}, "full")
        after_touch = payload_residency(path, begin, end, edge)
        probe_bytes = mapping.entries[probe].nbytes
    return seconds, {"payload_bytes": end - begin, "read_ahead_bytes": ra, "edge_bytes": edge,
                     "resident_before": before, "resident_after_inspect": after_inspect,
                     "control_tensor": probe, "control_tensor_bytes": probe_bytes,
                     "resident_after_control": after_touch}


CHILD_MODES: dict[str, Callable[[Ctx], tuple[float, dict[str, Any]]]] = {
    "load-anc": load_anc_full,
    "load-anc-lazy": load_anc_lazy,
    "load-safetensors": load_safetensors,
    "load-torch": lambda ctx: _load_torch(ctx, False),
    "load-torch-mmap": lambda ctx: _load_torch(ctx, True),
    "save-anc": save_anc,
    "save-anc-nofsync": save_anc_nofsync,
    "save-safetensors": save_safetensors,
    "save-safetensors-fsync": save_safetensors_fsync,
    "save-torch": save_torch,
    "inspect": anc_inspect,
    "verify": anc_verify,
    "hashlib-sha256": hashlib_sha256,
    "inspect-residency": inspect_residency,
}


def child_main(args: argparse.Namespace) -> None:
    ctx = Ctx(args)  # holds every mode's results until the child's memory has been read
    # Everything any mode needs is imported first, so the post-import RSS is the same baseline for
    # all. anemoi_ckpt imports its torch-facing module on the first tensor access (so that
    # inspect/verify start fast); that is import time too, which no row should include.
    H.child_main(args.child, {mode: partial(fn, ctx) for mode, fn in CHILD_MODES.items()},
                 prepare=lambda: child_prepare(ctx), warmup=warm_torch,
                 imports=["anemoi_ckpt", "anemoi_ckpt.summary", "numpy",
                          ("anemoi_ckpt.container.tensorio", "anemoi_ckpt.tensorio"), "safetensors.torch"])


# --------------------------------------------------------------------------------------------
# Parent: orchestration
# --------------------------------------------------------------------------------------------

def run_child(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    # No memory sampling thread here: the loads take milliseconds, and the children report their
    # memory split themselves (RssAnon / RssFile at the end of the timed region).
    return H.run_child(__file__, mode, ["--workdir", str(args.workdir), "--size-gb", str(args.size_gb),
                                        "--seed", str(args.seed), "--touch", args.touch])


def measure(args: argparse.Namespace, mode: str, label: str, group: str) -> Measurement:
    return H.measure(mode, label, lambda: run_child(args, mode), args.repeat, H.Quiet.of(args),
                     group=group, digits=3, width=40)


def time_command(args: argparse.Namespace, cmd: list[str], label: str) -> Measurement:
    """Wall time of an external command (start-up included), median of --repeat runs."""
    def run_one() -> dict[str, Any]:
        res = H.run_process(cmd)
        return {"seconds": res.seconds, "peak_rss": res.peak_rss, "rss_post_import": 0}

    return H.measure(" ".join(cmd), label, run_one, args.repeat, H.Quiet.of(args), group="integrity",
                     digits=3, width=40)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def print_table(results: dict[str, Measurement], file_bytes: int) -> None:
    st_load, pt_load = results["load-safetensors"].seconds, results["load-torch"].seconds
    st_save, pt_save = results["save-safetensors"].seconds, results["save-torch"].seconds
    C = H.Column
    rows = []
    for m in results.values():
        if m.group == "integrity":
            continue
        st, pt = (st_load, pt_load) if m.group == "load" else (st_save, pt_save)
        rows.append([m.label, m.seconds, H.ratio(m.seconds, st), H.ratio(m.seconds, pt),
                     m.median("peak_rss") / MB, m.rss_increase / MB, m.median("rss_anon_end") / MB,
                     m.median("rss_file_end") / MB])
    H.print_table([C("method", 40), C("median s", 9, ".3f"), C("vs safetensors", 15, ".2f", "x"),
                   C("vs torch", 9, ".2f", "x"), C("peak RSS MB", 12, ".0f"), C("+RSS MB", 8, ".0f"),
                   C("anon MB", 8, ".0f"), C("file MB", 8, ".0f")], rows)
    sha = results["sha256sum"].seconds
    H.print_table([C("integrity / metadata", 40), C("median s", 9, ".3f"), C("GB/s", 8, ".2f"),
                   C("vs sha256sum", 13, ".2f", "x")],
                  [[m.label, m.seconds, file_bytes / GB / m.seconds, H.ratio(sha, m.seconds)]
                   for m in results.values() if m.group == "integrity"],
                  note="(vs sha256sum = throughput relative to sha256sum; > 1 is faster)")


def check_targets(results: dict[str, Measurement]) -> list[dict[str, Any]]:
    """The issue's targets."""
    r = {k: m.seconds for k, m in results.items()}
    save = results["save-anc"]
    tensors = statistics.median(s["extra"]["tensor_bytes"] for s in save.samples)
    T = H.Target
    return H.check_targets([
        T(".anc full load <= 1.1x safetensors.load_file", r["load-anc"] / r["load-safetensors"], 1.1),
        T(".anc lazy 10% < 0.2x .anc full load", r["load-anc-lazy"] / r["load-anc"], 0.2, strict=True),
        T("anemoi_ckpt.save <= 1.2x safetensors.save_file", r["save-anc"] / r["save-safetensors"], 1.2),
        T("  same, both durable (fsync)", r["save-anc"] / r["save-safetensors-fsync"], 1.2),
        T("  same, neither durable (durable=False)", r["save-anc-nofsync"] / r["save-safetensors"], 1.2),
        T("save peak RSS increase <= 1.1x tensor bytes", save.rss_increase / tensors, 1.1),
        T("verify throughput >= 0.8x sha256sum", r["sha256sum"] / r["verify"], 0.8, higher_is_better=True),
    ], width=50)


def report_residency(res: dict[str, Any]) -> bool:
    """Print the residency check; True if inspect left no interior payload page resident."""
    e = res["extra"]
    ra = f"{e['read_ahead_bytes'] / MB:.1f} MB" if e["read_ahead_bytes"] is not None else "unknown"

    def fmt(r: dict[str, int]) -> str:
        return (f"{r['total'] / MB:7.2f} MB resident ({r['interior'] / MB:.2f} MB interior, "
                f"{r['edges'] / MB:.2f} MB within {e['edge_bytes'] / MB:.0f} MB of either end)")

    print(f"  tensor payload {e['payload_bytes'] / MB:.0f} MB; device read-ahead {ra}")
    print(f"  after eviction:                       {fmt(e['resident_before'])}")
    print(f"  after open + summarize (inspect):     {fmt(e['resident_after_inspect'])}")
    print(f"  control, after reading 1 tensor of {e['control_tensor_bytes'] / MB:.0f} MB: "
          f"{fmt(e['resident_after_control'])}")
    ok = e["resident_after_inspect"]["interior"] == 0
    print(f"  {'PASS' if ok else 'FAIL'}  inspect read no tensor bytes beyond kernel read-ahead at the "
          f"payload's ends (header before it, manifest after it)")
    return ok


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

LOADS = [
    ("load-anc", ".anc open + state_dict"),
    ("load-anc-lazy", ".anc open + 10% of names"),
    ("load-safetensors", "safetensors.torch.load_file"),
    ("load-torch", "torch.load(weights_only)"),
    ("load-torch-mmap", "torch.load(weights_only, mmap)"),
]
SAVES = [
    ("save-anc", "anemoi_ckpt.save (atomic, fsync)"),
    ("save-anc-nofsync", "anemoi_ckpt.save(durable=False)"),
    ("save-safetensors", "safetensors.torch.save_file"),
    ("save-safetensors-fsync", "safetensors.save_file + fsync"),
    ("save-torch", "torch.save"),
]
INTEGRITY = [
    ("inspect", ".anc inspect (open + summarize)"),
    ("verify", ".anc verify (open + verify)"),
    ("hashlib-sha256", "hashlib.sha256, 1 stream (reference)"),
]


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    H.print_header(f"anemoi-ckpt container benchmark: --size-gb {args.size_gb}, --repeat {args.repeat}, "
                   f"--touch {args.touch}, workdir {args.workdir}")
    print("\nwriting the reference files (once, not measured) ...", flush=True)
    prep = run_child(args, "prepare")
    paths = [args.workdir / f for f in FILES.values()]
    print(f"  anemoi_ckpt {prep['anemoi_ckpt']}; " +
          ", ".join(f"{k} {v}" for k, v in prep["versions"].items()))
    print(f"  {prep['tensors']} tensors, {prep['parameters'] / 1e6:.1f} M parameters, "
          f"{prep['bytes'] / GB:.3f} GB of fp32; " +
          ", ".join(f"{p.name} {p.stat().st_size / GB:.3f} GB" for p in paths))
    # Written, synced, evicted, then read once: every file enters the page cache the same way,
    # whatever its writer's write sizes were.
    H.settle()
    for p in paths:
        H.evict(p)
    warmed = H.warm_page_cache(paths)
    print(f"page cache warmed: each file synced, evicted and read once before timing "
          f"({warmed / GB:.2f} GB); all loads below read from the page cache, not the disk")

    results: dict[str, Measurement] = {}
    print(f"\nloads (touch: {args.touch}) ...")
    for mode, label in LOADS:
        results[mode] = measure(args, mode, label, "load")
    print("\nsaves (tensors built before the clock starts; disk synced between runs) ...")
    for mode, label in SAVES:
        results[mode] = measure(args, mode, label, "save")
    print("\ninspect / verify / hashing of the .anc ...")
    for mode, label in INTEGRITY:
        results[mode] = measure(args, mode, label, "integrity")
    anc = str(args.workdir / FILES["anc"])
    cli = str(Path(sys.executable).with_name("anemoi-ckpt"))
    results["sha256sum"] = time_command(args, ["sha256sum", anc], "sha256sum (coreutils)")
    if shutil.which("openssl"):
        results["openssl"] = time_command(args, ["openssl", "dgst", "-sha256", anc],
                                          "openssl dgst -sha256 (reference)")
    if os.path.exists(cli):
        results["cli-inspect"] = time_command(args, [cli, "inspect", anc, "--json"],
                                              "CLI inspect --json (incl. start-up)")
        results["cli-verify"] = time_command(args, [cli, "verify", anc, "--json"],
                                             "CLI verify --json (incl. start-up)")

    print("\ndoes inspect read tensor bytes? (page-cache residency via mincore) ...")
    residency = run_child(args, "inspect-residency")
    residency["pass"] = report_residency(residency)
    H.warm_page_cache([args.workdir / FILES["anc"]])  # leave the .anc in the page cache, as found

    file_bytes = os.path.getsize(anc)
    print_table(results, file_bytes)
    print("\nRSS columns: peak RSS = ru_maxrss of the child; +RSS = peak minus RSS right after imports; "
          "anon/file = RssAnon/RssFile at the end of the timed region (file = mapped page cache).")
    lazy = results["load-anc-lazy"].samples[0]["extra"]
    print(f"tensor bytes: {prep['bytes'] / MB:.0f} MB; the lazy load materialised {lazy['tensors_loaded']} "
          f"of {prep['tensors']} tensors, {lazy['bytes_loaded'] / MB:.0f} MB")
    print("\ntargets")
    targets = check_targets(results)
    print(H.background_line((s["background_cpu"] for m in results.values() for s in m.samples),
                            args.max_background))
    return {
        "config": {"size_gb": args.size_gb, "repeat": args.repeat, "touch": args.touch, "seed": args.seed,
                   **H.environment()},
        "prepare": prep,
        "results": {k: {**m.to_json(), "median_rss_increase": m.rss_increase} for k, m in results.items()},
        "inspect_residency": residency,
        "targets": targets,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_common_args(p, size_gb=1.0, size_help="size of the synthetic state dict", workdir=DEFAULT_WORKDIR,
                      keep_help="keep the reference files afterwards")
    p.add_argument("--touch", choices=TOUCH_MODES, default="page",
                   help="how loaded tensors are touched: one element per 4 KiB page (default) or t.sum()")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def cleanup() -> None:
        if not args.keep:
            for name in FILES.values():
                (args.workdir / name).unlink(missing_ok=True)

    H.main_flow(args, lambda: child_main(args), lambda: run_benchmark(args), cleanup)


if __name__ == "__main__":
    main()
