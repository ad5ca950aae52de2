#!/usr/bin/env python
"""Benchmark compressed tensor sections (``convert --compress zstd``) against the ``zstd`` CLI.

Three synthetic, AIFS-shaped files (bench_convert's layout), each about ``--size-gb`` GB, are
written once, uncompressed, with the Writer:

- ``bf16``: model weights in bfloat16; ``fp32``: the same in float32. Values look trained rather
  than random bytes: linear weights ``randn x 0.02``, biases ``randn x 0.01``, norm weights
  ``1 + randn x 0.05`` (the exponent bytes then cluster as a trained model's do);
- ``training``: fp32 weights (1/3) with AdamW state as ``convert`` writes a Lightning checkpoint
  (section ``optimizer``: ``<name>.exp_avg`` ~ ``randn x 3e-5``, ``<name>.exp_avg_sq`` log-normal
  around 4e-10, positive and tiny, ``<name>.step``) and a ``training-state`` document.

Then, per kind, each in a fresh child process with the inputs in the page cache:

- compress: ``anemoi_ckpt.convert(src, dst, compress="zstd[:LEVEL]", durable=False)`` against
  ``zstd -3 -T0`` on the uncompressed file (neither fsyncs);
- decompress: open the compressed file, ``state_dict()`` of every tensor section and read every
  byte (``read all``); the same one tensor at a time, each dropped after reading (``stream``: the
  memory bound); against ``zstd -d`` of the ``zstd -3`` file to ``/dev/null``. GB/s are of the
  logical (decompressed) tensor bytes;
- size: the compressed ``.anc`` against the uncompressed one and against ``zstd -19`` and
  ``zstd -3`` of the whole uncompressed file. ``zstd -19`` runs at ~0.5-2 MB/s here, so by default
  (``--zstd19 sample``) it compresses 16 evenly spaced 1 MiB slices of the file and ``zstd -3``
  the same slices, so the sample's -19/-3 ratio can be checked against -3 of the whole file;
  ``--zstd19 whole`` runs it on the whole file.

Targets (issue 20): bf16 weights at least 25% smaller than the uncompressed ``.anc``;
decompression at least 1 GB/s. See benchmarks/README.md, "Compression".

    .venv/bin/python benchmarks/bench_compress.py                         # 0.25 GB each, 3 repeats
    .venv/bin/python benchmarks/bench_compress.py --size-gb 0.05 --repeat 1 --kinds bf16
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness as H  # noqa: E402
import bench_convert as bconv  # noqa: E402  (the AIFS-like layout)
from _harness import GB, MB, Measurement  # noqa: E402

DEFAULT_WORKDIR = HERE / "out"
KINDS = ("bf16", "fp32", "training")
SIZE_TARGET = 0.75  # bf16: compressed / uncompressed .anc, at most (>= 25% smaller)
DECOMPRESS_TARGET = 1.0  # GB/s of logical bytes, at least
RSS_ALLOWANCE = 64 * 10**6  # stream read: anonymous memory <= largest tensor + this
SAMPLE_SLICES, SLICE = 16, 1 << 20

# --------------------------------------------------------------------------------------------
# The synthetic files
# --------------------------------------------------------------------------------------------


def _randn(shape: tuple[int, ...], seed: int) -> Any:
    import torch

    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def weight_like(name: str, shape: tuple[int, ...], seed: int) -> Any:
    """Values with a trained model's magnitudes, by the parameter's role."""
    t = _randn(shape, seed)
    if "norm" in name and name.endswith(".weight"):
        return t.mul_(0.05).add_(1.0)
    return t.mul_(0.01 if name.endswith(".bias") else 0.02)


def write_source(path: Path, kind: str, size_gb: float, seed: int) -> dict[str, Any]:
    """Write ``kind``'s uncompressed ``.anc``; returns its tensor count, logical and largest bytes."""
    import torch

    import anemoi_ckpt

    fp32_gb = {"bf16": 2 * size_gb, "fp32": size_gb, "training": size_gb / 3}[kind]
    logical, largest, count, names = 0, 0, 0, []
    with anemoi_ckpt.Writer(path, kind="training" if kind == "training" else "inference", progress=None) as w:
        def add(name: str, t: Any, section: str = "weights") -> None:
            nonlocal logical, largest, count
            w.add(name, t, section=section)
            logical, largest, count = logical + H.nbytes(t), max(largest, H.nbytes(t)), count + 1

        spec = bconv.weights_spec(fp32_gb)
        for i, (name, shape) in enumerate(spec):  # a section's tensors are added together
            t = weight_like(name, shape, seed * 1_000_003 + 3 * i)
            add(name, t.to(torch.bfloat16) if kind == "bf16" else t)
        for i, (name, shape) in enumerate(spec if kind == "training" else []):
            base = seed * 1_000_003 + 3 * i
            names.append(name)
            add(f"{name}.exp_avg", _randn(shape, base + 1).mul_(3e-5), "optimizer")
            # An EMA of squared gradients: positive, tiny, spread over a few decades.
            add(f"{name}.exp_avg_sq", _randn(shape, base + 2).mul_(0.7).exp_().mul_(2e-5).square_(), "optimizer")
            add(f"{name}.step", torch.tensor(1200.0), "optimizer")
        if kind == "training":
            w.add_document("training-state", {
                "epoch": 3, "global_step": 1200,
                "optimizers": [{"section": "optimizer", "names": "by-parameter", "scalar_state": {},
                                "param_groups": [{"lr": 6.25e-5, "betas": [0.9, 0.95], "eps": 1e-8,
                                                  "weight_decay": 0.1, "params": names}]}]})
    return {"tensors": count, "logical_bytes": logical, "largest_tensor_bytes": largest,
            "file_bytes": path.stat().st_size}


# --------------------------------------------------------------------------------------------
# Files and child modes (fresh interpreter each): return (seconds, extra)
# --------------------------------------------------------------------------------------------


def src_path(args: argparse.Namespace) -> Path:
    return args.workdir / f"compress-{args.kind}.anc"


def zanc_path(args: argparse.Namespace) -> Path:
    return args.workdir / f"compress-{args.kind}.zstd.anc"


def compress_spec(args: argparse.Namespace) -> str:
    return "zstd" if args.level is None else f"zstd:{args.level}"


def has_compress_api() -> bool:
    """Whether this anemoi_ckpt's convert takes ``compress`` (before it did, the benchmark runs
    its harness on the uncompressed path and says so)."""
    from anemoi_ckpt.convert import engine

    return "compress" in inspect.signature(engine.convert).parameters


def child_convert(args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    """convert, with its phases timed by wrapping (in this child only) the source hash (run in a
    thread beside the write) and the read-back check; the rest is the streamed, compressing write."""
    from anemoi_ckpt.convert import engine

    phases = {"source_sha256": 0.0, "verify_output": 0.0}

    engine.file_sha256 = H.phase_timer(phases, "source_sha256", engine.file_sha256)
    engine.verify_output = H.phase_timer(phases, "verify_output", engine.verify_output)
    kw: dict[str, Any] = {"compress": compress_spec(args)} if has_compress_api() else {}
    dst = zanc_path(args)
    run = lambda: engine.convert(src_path(args), dst, keep_layout=True, durable=False, progress=False, **kw)  # noqa: E731
    seconds, _ = H.profiled(run, args.profile, "convert --compress")
    return seconds, {"output_bytes": dst.stat().st_size, "compressed": bool(kw), "phases": phases}


def _touch(t: Any) -> None:
    """Read every byte of a tensor: numpy's max over its bytes (2-20 GB/s here; torch's uint8 max
    ran at 0.3-1.5 GB/s beside the decoding threads, which would have charged it to the reader)."""
    if t.numel():
        t.reshape(-1).view(__import__("torch").uint8).numpy().max()


def child_read(args: argparse.Namespace, which: str, stream: bool) -> tuple[float, dict[str, Any]]:
    """Open the compressed (or plain) file and read every tensor of every section: all kept
    (``state_dict``) or one at a time (``stream``)."""
    import anemoi_ckpt

    anon0 = H.proc_status()["RssAnon"]
    path = zanc_path(args) if which == "compressed" else src_path(args)

    def run() -> tuple[int, list[Any]]:
        kept, total = [], 0
        with anemoi_ckpt.open(path) as ck:
            for section in ck.tensor_sections():
                if stream:
                    mapping = ck.tensors(section)
                    for name in mapping:
                        t = mapping[name]
                        _touch(t)
                        total += H.nbytes(t)
                        del t
                else:
                    sd = ck.state_dict(section)
                    for t in sd.values():
                        _touch(t)
                        total += H.nbytes(t)
                    kept.append(sd)
        return total, kept

    seconds, (total, kept) = H.profiled(run, args.profile, f"read {which}")
    return seconds, {"logical_bytes": total, "anon_start": anon0}


CHILD_MODES = {
    "convert": child_convert,
    "read-all": lambda a: child_read(a, "compressed", False),
    "stream": lambda a: child_read(a, "compressed", True),
    "read-all-plain": lambda a: child_read(a, "plain", False),
}
CHILD_IMPORTS = ("anemoi_ckpt", "anemoi_ckpt.convert", "anemoi_ckpt.convert.engine", "anemoi_ckpt.reader",
                 "anemoi_ckpt.writer", "anemoi_ckpt.container.tensorio", "numpy", "zstandard")


def child_main(args: argparse.Namespace) -> None:
    prepare = lambda: write_source(src_path(args), args.kind, args.size_gb, args.seed)  # noqa: E731
    H.child_main(args.child, {m: partial(fn, args) for m, fn in CHILD_MODES.items()}, prepare=prepare,
                 imports=CHILD_IMPORTS)


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------


def child_flags(args: argparse.Namespace, mode: str) -> list[str]:
    return (["--workdir", str(args.workdir), "--size-gb", str(args.size_gb), "--seed", str(args.seed),
             "--kind", args.kind] + (["--level", str(args.level)] if args.level is not None else [])
            + (["--profile"] if args.profile and mode in args.profile_modes else []))


def zstd_sample(cmd: list[str]) -> dict[str, Any]:
    """A zstd CLI run as a measurement sample (start-up included). No ``output`` key: the harness
    deletes a sample's output, and the decompression writes to /dev/null."""
    res = H.run_process(cmd, watch_memory=True)
    return {"seconds": res.seconds, "rss_post_import": 0, **res.memory()}


def measure_kind(args: argparse.Namespace) -> dict[str, Any]:
    src, zanc = src_path(args), zanc_path(args)
    z3 = src.with_suffix(".anc.zst")
    print(f"\n[{args.kind}] writing the uncompressed .anc (once, not measured) ...", flush=True)
    prep = H.run_child(__file__, "prepare", child_flags(args, "prepare"))
    print(f"  {src.name}: {prep['file_bytes'] / GB:.3f} GB, {prep['tensors']} tensors, "
          f"largest {prep['largest_tensor_bytes'] / MB:.1f} MB")
    H.settle()
    H.warm_page_cache([src])
    quiet = H.Quiet.of(args)
    child = lambda mode: H.run_child(__file__, mode, child_flags(args, mode), watch_memory=True)  # noqa: E731
    rows: dict[str, Measurement] = {}
    zanc.unlink(missing_ok=True)  # left by an interrupted run: convert keeps existing outputs
    rows["convert"] = H.measure("convert", f"convert --compress {compress_spec(args)}", partial(child, "convert"),
                                args.repeat, quiet, keep_last_output=True)
    rows["zstd-3"] = H.measure("zstd-3", "zstd -3 -T0 (CLI)", partial(
        zstd_sample, ["zstd", "-3", "-T0", "-q", "-f", str(src), "-o", str(z3)]), args.repeat, quiet)
    H.warm_page_cache([zanc, z3])
    for mode, label in (("read-all", "read all (state_dict + every byte)"),
                        ("stream", "stream (one tensor at a time)"),
                        ("read-all-plain", "read all, uncompressed .anc (mapped)")):
        rows[mode] = H.measure(mode, label, partial(child, mode), args.repeat, quiet)
    rows["zstd-d"] = H.measure("zstd-d", "zstd -d of the -3 file (CLI)", partial(
        zstd_sample, ["zstd", "-d", "-q", "-f", str(z3), "-o", os.devnull]), args.repeat, quiet)
    sizes = {"anc": src.stat().st_size, "ours": zanc.stat().st_size, "zstd-3": z3.stat().st_size,
             **zstd19_sizes(args, src)}
    compressed = rows["convert"].samples[-1]["extra"]["compressed"]
    for p in (zanc, z3) if not args.keep else ():  # GBs; --keep leaves them for --child --profile
        p.unlink(missing_ok=True)
    return {"prepare": prep, "rows": rows, "sizes": sizes, "compressed": compressed}


def zstd19_sizes(args: argparse.Namespace, src: Path) -> dict[str, Any]:
    """zstd -19 of the whole file (``whole``), or -19 and -3 of a sample of it (``sample``)."""
    if args.zstd19 == "skip":
        return {}
    target, size = src, src.stat().st_size
    if args.zstd19 == "sample" and size > SAMPLE_SLICES * SLICE:
        target = src.with_suffix(".sample")
        step = (size - SLICE) // (SAMPLE_SLICES - 1)
        with open(src, "rb") as fin, open(target, "wb") as fout:
            for i in range(SAMPLE_SLICES):
                fin.seek(i * step)
                fout.write(fin.read(SLICE))
    out = {"zstd19_mode": "whole" if target == src else "sample", "zstd19_input": target.stat().st_size}
    for level in (19, 3):
        if level == 3 and target == src:
            break
        dst = target.with_suffix(f".{level}.zst")
        seconds, _ = H.timed(lambda: H.run_process(["zstd", f"-{level}", "-T0", "-q", "-f", str(target), "-o", str(dst)]))
        out[f"zstd{level}_ratio"] = dst.stat().st_size / target.stat().st_size
        out[f"zstd{level}_seconds"] = seconds
        dst.unlink()
    if target != src:
        target.unlink()
    print(f"  zstd -19 ({out['zstd19_mode']}, {out['zstd19_input'] / MB:.0f} MB): ratio {out['zstd19_ratio']:.4f} "
          f"in {out['zstd19_seconds']:.1f} s" + (f"; zstd -3 of the same sample {out['zstd3_ratio']:.4f}"
                                                  if "zstd3_ratio" in out else ""))
    return out


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    C = H.Column
    size_rows, speed_rows, targets, notes = [], [], [], []
    for kind, r in results.items():
        s, logical, rows = r["sizes"], r["prepare"]["logical_bytes"], r["rows"]
        z19 = s.get("zstd19_ratio")
        z3_whole = s["zstd-3"] / s["anc"]
        ours = s["ours"] / s["anc"]
        size_rows.append([kind, s["anc"] / MB, s["ours"] / MB, ours, z3_whole, z19, H.ratio(ours, z19)])
        for mode, m in rows.items():
            nbytes = s["anc"] if mode in ("convert", "zstd-3") else logical
            extra = m.median("peak_anon_sampled") - m.samples[-1]["extra"].get("anon_start", 0) \
                if mode in ("read-all", "stream", "read-all-plain") else None
            speed_rows.append([kind, m.label, m.seconds, nbytes / GB / m.seconds, m.median("peak_rss") / MB,
                               extra / MB if extra is not None else None])
        gbs = {k: logical / GB / rows[k].seconds for k in ("read-all", "stream")}
        largest = r["prepare"]["largest_tensor_bytes"]
        stream_anon = rows["stream"].median("peak_anon_sampled") - rows["stream"].samples[-1]["extra"]["anon_start"]
        phases = rows["convert"].samples[-1]["extra"]["phases"]
        notes.append(f"{kind}: compress {rows['zstd-3'].seconds / rows['convert'].seconds:.2f}x the speed of zstd -3 -T0 "
                     f"(convert: source sha256 {phases['source_sha256']:.2f} s in a thread, read-back check "
                     f"{phases['verify_output']:.2f} s of {rows['convert'].seconds:.2f} s); decompress (read all) "
                     f"{rows['zstd-d'].seconds / rows['read-all'].seconds:.2f}x the speed of zstd -d, stream "
                     f"{rows['zstd-d'].seconds / rows['stream'].seconds:.2f}x")
        t = [H.Target(f"{kind}: decompress (read all) >= 1 GB/s", gbs["read-all"], DECOMPRESS_TARGET, True, " GB/s"),
             H.Target(f"{kind}: stream read +anon <= largest + 64 MB", stream_anon / MB,
                      (largest + RSS_ALLOWANCE) / MB, unit="MB")]
        if kind == "bf16":
            t.insert(0, H.Target("bf16: compressed / uncompressed .anc <= 0.75", ours, SIZE_TARGET))
        targets += t
    H.print_table([C("kind", 9), C(".anc MB", 9, ".1f"), C("zstd.anc MB", 12, ".1f"), C("ours/anc", 9, ".3f"),
                   C("zstd-3/anc", 11, ".3f"), C("zstd-19/anc", 12, ".3f"), C("ours/zstd-19", 13, ".3f")], size_rows,
                  note="(ours = convert --compress; zstd -N = the CLI over the whole uncompressed .anc; "
                       "zstd-19 from a sample unless --zstd19 whole)")
    H.print_table([C("kind", 9), C("operation", 40), C("median s", 9, ".3f"), C("GB/s", 7, ".2f"),
                   C("peak RSS MB", 12, ".0f"), C("+anon MB", 9, ".0f")], speed_rows,
                  note="(GB/s: compress rows of the uncompressed file, the others of the logical tensor bytes; "
                       "+anon = sampled RssAnon peak minus the child's RssAnon before reading)")
    print("\n" + "\n".join(notes) + "\n")
    return H.check_targets(targets, width=50)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    H.print_header(f"anemoi-ckpt compression benchmark: --size-gb {args.size_gb}, --repeat {args.repeat}, "
                   f"--compress {compress_spec(args)}, kinds {','.join(args.kinds)}")
    print(f"anemoi_ckpt {H.package_origin()}; zstd CLI: "
          f"{H.run_process(['zstd', '--version']).stdout.strip()}")
    results = {}
    for kind in args.kinds:
        args.kind = kind
        results[kind] = measure_kind(args)
        if not results[kind]["compressed"]:
            print("  NOTE: this anemoi_ckpt's convert has no `compress`: the 'compressed' file is the "
                  "uncompressed path (a harness check, not a result)")
    targets = report(args, results)
    print(H.background_line((s["background_cpu"] for r in results.values() for m in r["rows"].values()
                             for s in m.samples), args.max_background))
    return {"config": {"size_gb": args.size_gb, "repeat": args.repeat, "compress": compress_spec(args),
                       "zstd19": args.zstd19, **H.environment()},
            "results": {k: {"prepare": r["prepare"], "sizes": r["sizes"], "compressed": r["compressed"],
                            "rows": {m: v.to_json() for m, v in r["rows"].items()}} for k, r in results.items()},
            "targets": targets}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_common_args(p, size_gb=0.25, size_help="size of each uncompressed file", workdir=DEFAULT_WORKDIR,
                      profile_help="the convert and the reads")
    p.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS),
                   help=f"comma-separated subset of {','.join(KINDS)} (default all)")
    p.add_argument("--level", type=int, help="zstd level for convert (default: convert's own)")
    p.add_argument("--zstd19", choices=("sample", "whole", "skip"), default="sample",
                   help="zstd -19 of a 16 MiB sample (default), of the whole file, or not at all")
    p.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)  # a child's data kind
    args = p.parse_args(argv)
    args.profile_modes = set(CHILD_MODES)
    for k in args.kinds:
        if k not in KINDS:
            p.error(f"unknown kind {k!r} (choose from {', '.join(KINDS)})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def cleanup() -> None:
        if args.keep:
            return
        for kind in KINDS:
            for p in args.workdir.glob(f"compress-{kind}.*"):
                p.unlink(missing_ok=True)

    H.main_flow(args, lambda: child_main(args), lambda: run_benchmark(args), cleanup)


if __name__ == "__main__":
    main()
