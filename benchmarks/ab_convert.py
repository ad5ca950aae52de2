"""A/B of two versions of anemoi_ckpt on one conversion, interleaved, against `cp` + fsync.

On a shared machine the load changes from minute to minute, so two separate runs of
`bench_convert.py` / `bench_to_inference.py` (one per version) compare different loads. This
script runs the versions and the `cp` yardstick in turn, each run in a fresh process, N rounds,
and reports medians of the wall time and of the process's CPU time (user + system: what a
saturated 2-core machine really charges), the ratio of each version to `cp` + fsync and the
target with PASS/FAIL.

    git archive main anemoi_ckpt translations pyproject.toml | tar -x -C /tmp/before
    git archive HEAD anemoi_ckpt translations pyproject.toml | tar -x -C /tmp/after
    .venv/bin/python benchmarks/ab_convert.py --mode to-inference --src benchmarks/out/toinf-train.anc \\
        --cp-src benchmarks/out/toinf-weights.safetensors --trees /tmp/before /tmp/after --repeat 7
    .venv/bin/python benchmarks/ab_convert.py --mode legacy --src benchmarks/out/convert-source-lightning.ckpt \\
        --trees /tmp/before /tmp/after --repeat 7

The sources are those `bench_to_inference.py --keep` / `bench_convert.py --keep` leave behind.
`--mode to-inference` compares with `cp` of the weights member (target: time <= 1.3x);
`--mode legacy` with `cp` of the whole source (target: speed >= 0.5x, i.e. time <= 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
import torch, safetensors  # the imports are not timed (as in the benchmarks)
import anemoi_ckpt
from anemoi_ckpt.convert import engine
src, dst, mode = sys.argv[1:4]
os.sync()
ru = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
engine.convert(src, dst, progress=False, **({"to": "inference"} if mode == "to-inference" else {}))
wall = time.perf_counter() - t
ru2 = resource.getrusage(resource.RUSAGE_SELF)
cpu = ru2.ru_utime + ru2.ru_stime - ru.ru_utime - ru.ru_stime
print(json.dumps({"wall": wall, "cpu": cpu, "package": os.path.dirname(anemoi_ckpt.__file__)}))
"""


def run_version(tree: str, src: str, dst: str, mode: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", CHILD, src, dst, mode], env=env, check=True,
                         capture_output=True, text=True, cwd="/")
    os.unlink(dst)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cp(src: str, dst: str) -> dict[str, float]:
    os.sync()
    t = time.perf_counter()
    r0 = os.times()
    subprocess.run(["cp", src, dst], check=True)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    wall = time.perf_counter() - t
    r1 = os.times()
    os.unlink(dst)
    return {"wall": wall, "cpu": (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("to-inference", "legacy"), required=True)
    p.add_argument("--src", required=True, help="the source to convert")
    p.add_argument("--cp-src", help="what cp copies (default: --src)")
    p.add_argument("--trees", nargs="+", required=True, help="folders holding an anemoi_ckpt package")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    out_dir = Path(args.src).resolve().parent
    cp_src = args.cp_src or args.src
    samples: dict[str, list[dict[str, float]]] = {t: [] for t in args.trees}
    samples["cp + fsync"] = []
    for i in range(args.repeat):
        for tree in args.trees:
            samples[tree].append(run_version(tree, args.src, str(out_dir / "ab-out.anc"), args.mode))
        samples["cp + fsync"].append(run_cp(cp_src, str(out_dir / "ab-cp.out")))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]['wall']:.2f} s" for k, v in samples.items()),
              flush=True)
    med = {k: {m: statistics.median(s[m] for s in v) for m in ("wall", "cpu")} for k, v in samples.items()}
    cp = med["cp + fsync"]["wall"]
    print(f"\n{'version':<48} {'wall s':>7} {'CPU s':>7} {'vs cp+fsync':>12}")
    for k, m in med.items():
        print(f"{k:<48} {m['wall']:>7.2f} {m['cpu']:>7.2f} {m['wall'] / cp:>11.2f}x")
    print("\ntargets (ratios of medians; each version measured in the same rounds as cp)")
    for tree in args.trees:
        if args.mode == "to-inference":
            v, ok = med[tree]["wall"] / cp, med[tree]["wall"] / cp <= 1.3
            print(f"  {'PASS' if ok else 'FAIL'}  {tree}: time / (cp + fsync) {v:.2f}x (limit 1.30x)")
        else:
            v = cp / med[tree]["wall"]
            print(f"  {'PASS' if v >= 0.5 else 'FAIL'}  {tree}: speed vs cp + fsync {v:.2f}x (limit 0.50x)")
    if len(args.trees) == 2:
        a, b = args.trees
        print(f"  {b} / {a}: wall {med[b]['wall'] / med[a]['wall']:.2f}x, CPU {med[b]['cpu'] / med[a]['cpu']:.2f}x")


if __name__ == "__main__":
    main()
