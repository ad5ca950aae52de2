#!/usr/bin/env python
"""Benchmark ``anemoi_ckpt.convert`` against the naive conversion and against ``cp``.

A synthetic Lightning training checkpoint shaped like anemoi-training's (about 1/3 fp32 weights,
2/3 AdamW moments ``exp_avg`` / ``exp_avg_sq``; ``--size-gb`` is the whole file) is written once
with a real ``torch.save``. Then, each in a fresh child process, with the source in the page cache:

- naive: ``torch.load(src, weights_only=False)`` + ``safetensors.torch.save_file`` of the weights
  and the flattened optimizer moments (the whole checkpoint in memory);
- ours: ``anemoi_ckpt.convert.convert(src, dst)`` (durable, then ``durable=False``);
- ``cp src dst`` (+ ``os.fsync(dst)``): the cost of reading the source and writing a same-sized
  output, the floor for any converter.

Wall time (median of ``--repeat``), throughput and peak RSS (``ru_maxrss`` from ``os.wait4``, plus
sampled anonymous / file-backed peaks) are reported with the issue's targets. See
benchmarks/README.md.

Run from the repository root::

    .venv/bin/python benchmarks/bench_convert.py                              # 3 GB, 3 repeats
    .venv/bin/python benchmarks/bench_convert.py --size-gb 0.3 --repeat 1     # quick check
    .venv/bin/python benchmarks/bench_convert.py --format state-dict          # plain torch dict
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections import OrderedDict
from functools import partial
from math import prod
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness as H  # noqa: E402
import bench_container as bc  # noqa: E402  (the AIFS-like layout)
from _harness import GB, MB, Measurement, nbytes  # noqa: E402

DEFAULT_WORKDIR = HERE / "out"
FORMATS = ("lightning", "state-dict")
RSS_ALLOWANCE = 300 * 10**6  # the target: peak RSS < largest tensor + 300 MB

# --------------------------------------------------------------------------------------------
# The synthetic checkpoint
# --------------------------------------------------------------------------------------------

GRID_COLS = 256  # per-grid-node trainable tensors: (40320, 256) fp32 = 41 MB, the largest tensor


def weights_spec(weights_gb: float) -> list[tuple[str, tuple[int, ...]]]:
    """AIFS-like parameter names and shapes, about ``weights_gb`` GB of fp32, in state_dict order.

    The transformer block layout (1024 channels, attention q/k/v/projection, 1024->4096->1024 MLP,
    norms, gate; 12.6 M parameters per block) is bench_container's; blocks are added until the
    size is reached. Two per-grid-node tensors of (40320, 256) are the largest (41 MB), so the
    largest tensor stays a few tens of MB whatever the size, as in a real model.
    """
    block = [(n.replace(".proc.0.", ".proc.{i}."), s)
             for n, s in bc.spec(1 / bc.BLOCKS_AT_1GB) if ".processor.proc.0." in n]
    block_bytes = 4 * sum(prod(s) for _, s in block)
    rows = max(1, min(bc.GRID, round(bc.GRID * weights_gb)))
    head = [("model.model.node_attributes.trainable_tensors.data", (rows, GRID_COLS)),
            ("model.model.node_attributes.trainable_tensors.hidden", (rows, GRID_COLS))]
    tail = [("model.model.decoder.layer_norm.weight", (bc.HIDDEN,)),
            ("model.model.decoder.layer_norm.bias", (bc.HIDDEN,))]
    fixed = 4 * sum(prod(s) for _, s in head + tail)
    blocks = max(1, round((weights_gb * GB - fixed) / block_bytes))
    body = [(n.format(i=i), s) for i in range(blocks) for n, s in block]
    return head + body + tail


def _randn(shape: tuple[int, ...], seed: int, scale: float) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).mul_(scale)


def make_tensors(size_gb: float, seed: int) -> tuple[OrderedDict, list[dict[str, Any]]]:
    """(state_dict, per-parameter AdamW state) of about ``size_gb`` GB in all (1/3 weights).
    Deterministic and incompressible (one generator per tensor), like bench_container's."""
    import torch

    sd: OrderedDict = OrderedDict()
    moments = []
    for i, (name, shape) in enumerate(weights_spec(size_gb / 3)):
        base = seed * 1_000_003 + 3 * i
        sd[name] = _randn(shape, base, 0.02)
        moments.append({"step": torch.tensor(1200.0),
                        "exp_avg": _randn(shape, base + 1, 1e-4),
                        "exp_avg_sq": _randn(shape, base + 2, 1e-4).square_()})
    return sd, moments


def lightning_checkpoint(sd: OrderedDict, moments: list[dict[str, Any]]) -> dict[str, Any]:
    """A dict shaped like anemoi-training's Lightning checkpoint. Every state_dict entry is a
    trainable parameter, and optimizer index i is the i-th of them (torch's param_groups order)."""
    n = len(sd)
    return {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": sd,
        "loops": {
            "fit_loop": {
                "state_dict": {},
                "epoch_loop.state_dict": {"_batches_that_stepped": 1200},
                "epoch_progress": {"total": {"ready": 4, "started": 4, "processed": 3, "completed": 3},
                                   "current": {"ready": 4, "started": 4, "processed": 3, "completed": 3}},
                "epoch_loop.batch_progress": {"total": {"ready": 1200, "completed": 1200},
                                              "is_last_batch": False},
            },
            "validate_loop": {"state_dict": {}, "batch_progress": {"total": {"ready": 40, "completed": 40}}},
        },
        "callbacks": {
            "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 400}": {
                "monitor": None, "best_model_score": None, "best_model_path": "",
                "current_score": None, "dirpath": "/checkpoints/run", "best_k_models": {},
                "kth_best_model_path": "", "kth_value": float("inf"), "last_model_path": "",
            },
            "LearningRateMonitor": {},
        },
        "optimizer_states": [{
            "state": dict(enumerate(moments)),
            "param_groups": [{
                "lr": 6.25e-5, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                "amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
                "differentiable": False, "fused": None, "initial_lr": 6.25e-4,
                "params": list(range(n)),
            }],
        }],
        "lr_schedulers": [{}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"config": {
            "training": {"max_epochs": 10, "lr": {"rate": 6.25e-4, "min": 3e-7, "warmup": 1000},
                         "precision": "16-mixed", "optimizer": {"zero": False, "kwargs": {"betas": [0.9, 0.95]}}},
            "model": {"num_channels": bc.HIDDEN, "processor": {"num_layers": 16, "num_heads": 16}},
            "data": {"resolution": "o96", "timestep": "6h", "frequency": "6h"},
        }},
    }


def flat_state_dict(sd: OrderedDict, moments: list[dict[str, Any]]) -> OrderedDict:
    """The same tensors as a plain flat dict (the ``state-dict`` format, and the naive output)."""
    out = OrderedDict(sd)
    for name, st in zip(sd, moments):
        out[f"optimizer.exp_avg.{name}"] = st["exp_avg"]
        out[f"optimizer.exp_avg_sq.{name}"] = st["exp_avg_sq"]
    return out


# --------------------------------------------------------------------------------------------
# Child modes (fresh interpreter each): return (seconds, extra)
# --------------------------------------------------------------------------------------------

def source_path(args: argparse.Namespace) -> Path:
    return args.workdir / f"convert-source-{args.format}.ckpt"


def output_path(args: argparse.Namespace, suffix: str) -> Path:
    return args.workdir / f"convert-output{suffix}"


def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Write the source checkpoint with torch.save (default zip format). Not measured."""
    import safetensors
    import torch

    sd, moments = make_tensors(args.size_gb, args.seed)
    obj = lightning_checkpoint(sd, moments) if args.format == "lightning" else flat_state_dict(sd, moments)
    t0 = time.perf_counter()
    torch.save(obj, source_path(args))
    return {"write_seconds": time.perf_counter() - t0, "parameters": len(sd),
            "weight_bytes": sum(nbytes(t) for t in sd.values()),
            "tensor_bytes": sum(nbytes(t) for t in flat_state_dict(sd, moments).values())
                            + sum(nbytes(m["step"]) for m in moments) * (args.format == "lightning"),
            "largest_tensor_bytes": max(nbytes(t) for t in sd.values()),
            "anemoi_ckpt": H.package_origin(),
            "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__}}


def naive(args: argparse.Namespace, durable: bool) -> tuple[float, dict[str, Any]]:
    """torch.load (everything unpickled into memory) + safetensors.save_file of the weights and
    the moments, mapped to names by order (optimizer index i = i-th state_dict entry)."""
    import safetensors.torch
    import torch

    src, dst = source_path(args), output_path(args, ".safetensors")

    def run() -> int:
        obj = torch.load(src, weights_only=False, map_location="cpu")
        if args.format == "lightning":
            sd = obj["state_dict"]
            opt = obj["optimizer_states"][0]
            order = [i for g in opt["param_groups"] for i in g["params"]]
            flat = OrderedDict(sd)
            for name, i in zip(sd, order):
                flat[f"optimizer.exp_avg.{name}"] = opt["state"][i]["exp_avg"]
                flat[f"optimizer.exp_avg_sq.{name}"] = opt["state"][i]["exp_avg_sq"]
        else:
            flat = obj
        safetensors.torch.save_file(flat, str(dst))
        if durable:
            H.fsync_path(dst)
        return len(flat)

    seconds, n = H.timed(run)
    return seconds, {"tensors_written": n, "output": str(dst)}


def ours(args: argparse.Namespace, durable: bool) -> tuple[float, dict[str, Any]]:
    """anemoi_ckpt.convert.convert, with its phases timed by wrapping (at run time, in this child
    only) the source hash (now beside the write, in a thread) and the read-back check; the rest is the
    streamed write."""
    from anemoi_ckpt.convert import engine

    phases = {"source_sha256": 0.0, "compare": 0.0}

    engine.file_sha256 = H.phase_timer(phases, "source_sha256", engine.file_sha256)
    engine.verify_output = H.phase_timer(phases, "compare", engine.verify_output)
    src, dst = source_path(args), output_path(args, ".anc")
    run = lambda: engine.convert(src, dst, durable=durable, progress=False)  # noqa: E731
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru.ru_utime + ru.ru_stime  # CPU seconds of the run: steadier than wall time under load
    seconds, report = H.profiled(run, args.profile and durable, "convert (durable)")
    # The source hash runs in a thread beside the write: it is part of "write" (the commit waits
    # for it), and printed on its own as the hash thread's busy time, not added to the total.
    phases["write"] = seconds - phases["compare"]
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    return seconds, {"phases": phases, "cpu_s": cpu.ru_utime + cpu.ru_stime - cpu0,
                     "tensors": report.tensors, "bytes": report.bytes,
                     "verified": report.verified, "format": report.format, "kind": report.kind,
                     "output_bytes": os.path.getsize(dst), "output": str(dst)}


CHILD_MODES = {
    "naive": lambda a: naive(a, False),
    "naive-fsync": lambda a: naive(a, True),
    "convert": lambda a: ours(a, True),
    "convert-nofsync": lambda a: ours(a, False),
}


#: What every child of the conversion benchmarks imports before its baseline RSS is taken.
CHILD_IMPORTS = ("anemoi_ckpt", "anemoi_ckpt.convert", "anemoi_ckpt.reader", "anemoi_ckpt.writer",
                 ("anemoi_ckpt.container.tensorio", "anemoi_ckpt.tensorio"), "numpy", "safetensors.torch")


def child_main(args: argparse.Namespace) -> None:
    H.child_main(args.child, {mode: partial(fn, args) for mode, fn in CHILD_MODES.items()},
                 prepare=partial(child_prepare, args), imports=CHILD_IMPORTS)


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------

def run_child(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    flags = ["--workdir", str(args.workdir), "--size-gb", str(args.size_gb), "--seed", str(args.seed),
             "--format", args.format] + (["--profile"] if args.profile and mode == "convert" else [])
    return H.run_child(__file__, mode, flags, watch_memory=True)


def run_cp(args: argparse.Namespace, durable: bool) -> dict[str, Any]:
    """``cp src dst`` (coreutils, as a process: start-up included), then os.fsync(dst) if durable;
    both inside the timed region."""
    return H.cp_sample(source_path(args), output_path(args, ".cp"), durable)


def measure(args: argparse.Namespace, mode: str, label: str) -> Measurement:
    run_one = (partial(run_cp, args, mode == "cp-fsync") if mode.startswith("cp")
               else partial(run_child, args, mode))
    return H.measure(mode, label, run_one, args.repeat, H.Quiet.of(args))


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

MODES = [
    ("naive", "naive: torch.load + save_file"),
    ("naive-fsync", "naive + fsync"),
    ("convert", "convert (durable, verified)"),
    ("convert-nofsync", "convert(durable=False)"),
    ("cp-fsync", "cp + fsync"),
    ("cp", "cp (no fsync)"),
]


def print_table(results: dict[str, Measurement], src_bytes: int) -> None:
    naive_s = results["naive"].seconds
    cp_s = results["cp-fsync"].seconds
    C = H.Column
    H.print_table(
        [C("method", 34), C("median s", 9, ".2f"), C("GB/s", 6, ".2f"), C("vs naive", 9, ".2f", "x"),
         C("vs cp+fsync", 12, ".2f", "x"), C("peak RSS MB", 12, ".0f"), C("+RSS MB", 8, ".0f"),
         C("anon MB", 8, ".0f"), C("file MB", 8, ".0f")],
        [[m.label, m.seconds, src_bytes / GB / m.seconds, H.ratio(naive_s, m.seconds), H.ratio(cp_s, m.seconds),
          m.median("peak_rss") / MB, m.rss_increase / MB, m.median("peak_anon_sampled") / MB,
          m.median("peak_file_sampled") / MB] for m in results.values()],
        note="(GB/s = source file size / time; vs naive / vs cp+fsync = speed relative to that row, > 1 is "
             "faster;\n peak RSS = ru_maxrss (os.wait4); +RSS = peak minus RSS after imports; anon / file = "
             "peaks of RssAnon / RssFile sampled every 10 ms)")


def check_targets(results: dict[str, Measurement], largest: int) -> list[dict[str, Any]]:
    r = {k: m.seconds for k, m in results.items()}
    conv = results["convert"]
    limit_rss = (largest + RSS_ALLOWANCE) / MB
    T = partial(H.Target, strict=True)  # "<" as the issue words it
    return H.check_targets([
        T("convert peak RSS < largest tensor + 300 MB", conv.median("peak_rss") / MB, limit_rss, unit="MB"),
        T("  (informative) anonymous peak < largest + 300 MB", conv.median("peak_anon_sampled") / MB,
          limit_rss, unit="MB"),
        H.Target("convert speed >= 2x naive (naive without fsync)", r["naive"] / r["convert"], 2.0, True),
        H.Target("  same, both durable (naive + fsync)", r["naive-fsync"] / r["convert"], 2.0, True),
        H.Target("  same, neither durable (durable=False)", r["naive"] / r["convert-nofsync"], 2.0, True),
        H.Target("convert speed >= 0.5x cp + fsync", r["cp-fsync"] / r["convert"], 0.5, True),
        H.Target("  same, neither durable (durable=False vs cp)", r["cp"] / r["convert-nofsync"], 0.5, True),
    ])


def print_phases(results: dict[str, Measurement]) -> None:
    for mode in ("convert", "convert-nofsync"):
        m = results[mode]
        ph = {k: statistics.median(s["extra"]["phases"][k] for s in m.samples)
              for k in ("write", "compare", "source_sha256")}
        cpu = statistics.median(s["extra"].get("cpu_s", float("nan")) for s in m.samples)
        total = ph["write"] + ph["compare"]
        print(f"  {m.label:<34} write + commit {ph['write']:.2f} s ({ph['write'] / total:.0%}), "
              f"read-back comparison {ph['compare']:.2f} s ({ph['compare'] / total:.0%}); source "
              f"sha256 {ph['source_sha256']:.2f} s in a thread beside the write; CPU {cpu:.2f} s")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def prepare_source(args: argparse.Namespace) -> dict[str, Any]:
    """Write the source once; with --keep, reuse one written earlier with the same settings."""
    src = source_path(args)
    meta_path = src.with_suffix(".json")
    key = {"size_gb": args.size_gb, "seed": args.seed, "format": args.format}
    if src.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and meta.get("bytes") == src.stat().st_size:
            print("  reusing the source written by an earlier --keep run")
            return meta["prepare"]
    prep = run_child(args, "prepare")
    prep = {k: v for k, v in prep.items() if k not in ("peak_rss", "peak_anon_sampled", "peak_file_sampled")}
    meta_path.write_text(json.dumps({"key": key, "bytes": src.stat().st_size, "prepare": prep}))
    return prep


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    H.print_header(f"anemoi-ckpt convert benchmark: --format {args.format}, --size-gb {args.size_gb}, "
                   f"--repeat {args.repeat}, workdir {args.workdir}")
    print("\nwriting the source checkpoint with torch.save (once, not measured) ...", flush=True)
    prep = prepare_source(args)
    src = source_path(args)
    src_bytes = src.stat().st_size
    print(f"  anemoi_ckpt {prep['anemoi_ckpt']}; " + ", ".join(f"{k} {v}" for k, v in prep["versions"].items()))
    print(f"  {src.name}: {src_bytes / GB:.3f} GB ({args.format}); {prep['parameters']} parameters, "
          f"weights {prep['weight_bytes'] / GB:.3f} GB, all tensors {prep['tensor_bytes'] / GB:.3f} GB, "
          f"largest tensor {prep['largest_tensor_bytes'] / MB:.1f} MB")
    H.settle()
    H.evict(src)
    H.warm_page_cache([src])
    print("page cache warmed: the source was synced, evicted and read once; every run reads it from the "
          "page cache. Outputs are deleted and the disk synced (untimed) between runs.")

    results: dict[str, Measurement] = {}
    print("\nmeasurements (each a fresh process; median of --repeat) ...")
    for mode, label in MODES:
        results[mode] = measure(args, mode, label)

    largest = prep["largest_tensor_bytes"]
    print_table(results, src_bytes)
    conv = results["convert"].samples[0]["extra"]
    print(f"\nconvert: format {conv['format']} ({conv['kind']}), tensors {conv['tensors']}, "
          f"{conv['bytes'] / GB:.3f} GB, {conv['verified']} verified bit for bit; output "
          f"{conv['output_bytes'] / GB:.3f} GB")
    print("convert phases (median s of wall time; CPU = user + system seconds of the process):")
    print_phases(results)
    print(f"\ntargets (largest tensor {largest / MB:.1f} MB; cp = coreutils cp, then os.fsync of the copy)")
    targets = check_targets(results, largest)
    print(H.background_line((s["background_cpu"] for m in results.values() for s in m.samples),
                            args.max_background))
    return {
        "config": {"format": args.format, "size_gb": args.size_gb, "repeat": args.repeat, "seed": args.seed,
                   **H.environment()},
        "prepare": prep, "source_bytes": src_bytes,
        "results": {k: m.to_json() for k, m in results.items()},
        "targets": targets,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_common_args(p, size_gb=3.0, size_help="size of the whole source checkpoint (1/3 weights, 2/3 AdamW "
                      "moments)", workdir=DEFAULT_WORKDIR,
                      keep_help="keep the source checkpoint afterwards (and reuse it on the next --keep run)",
                      profile_help="the durable convert")
    p.add_argument("--format", choices=FORMATS, default="lightning",
                   help="source: a Lightning training checkpoint (default) or a plain flat dict of "
                        "the same tensors (state-dict)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def cleanup() -> None:
        for suffix in (".safetensors", ".anc", ".cp"):
            output_path(args, suffix).unlink(missing_ok=True)
        if not args.keep:
            source_path(args).unlink(missing_ok=True)
            source_path(args).with_suffix(".json").unlink(missing_ok=True)

    H.main_flow(args, lambda: child_main(args), lambda: run_benchmark(args), cleanup)


if __name__ == "__main__":
    main()
