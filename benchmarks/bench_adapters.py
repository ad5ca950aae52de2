#!/usr/bin/env python
"""Benchmark ``anemoi_ckpt.adapters.merge`` and ``split`` against PEFT and a plain copy.

An AIFS-shaped torch ``nn.Module`` (about 1 GB of fp32 at ``--size-gb 1``) is saved as
``base.anc`` and ``base.safetensors``; a real PEFT LoRA adapter (rank 16, alpha 32) on every
``nn.Linear`` with random non-zero ``lora_B`` is written with ``save_pretrained`` and converted with
``anemoi_ckpt.convert.convert(adapter_dir, lora.anc, base=base.anc)``. A fine-tune (base + a random
rank-16 delta and small noise on every linear weight) is saved as ``finetuned.anc``. None of that
is timed. Then, each in a fresh child process, with every input in the page cache:

- ours: ``anemoi_ckpt.adapters.merge(base.anc, [lora.anc], merged.anc)`` (durable, and
  ``durable=False``);
- plain copy: ``anemoi_ckpt.open(base.anc)`` + ``anemoi_ckpt.save(copy.anc, ck.state_dict())``
  (durable, and ``durable=False``): the floor for any streamed rewrite of the base;
- PEFT: build the torch model, ``safetensors.torch.load_file`` + ``load_state_dict`` of the base,
  ``PeftModel.from_pretrained(model, adapter_dir)``, ``merge_and_unload()``,
  ``safetensors.torch.save_file(state_dict)`` (and the same + fsync);
- ``split(finetuned.anc, base.anc, out, rank=16)`` with the randomized SVD (default) and with the
  full SVD (``randomized=False``).

Merged weights are checked once against PEFT's merged state dict. Wall time (median of
``--repeat``), peak RSS (``ru_maxrss`` from ``os.wait4``) and sampled anonymous / file-backed peaks
are reported with the issue's targets. See benchmarks/README.md.

Run from the repository root::

    .venv/bin/python benchmarks/bench_adapters.py                              # 1 GB, 3 repeats
    .venv/bin/python benchmarks/bench_adapters.py --size-gb 0.1 --repeat 1     # quick check
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness as H  # noqa: E402
from _harness import GB, MB, Measurement, tensor_bytes  # noqa: E402

DEFAULT_WORKDIR = HERE / "out" / "adapters"
RSS_ALLOWANCE = 300 * 10**6  # the target: merge peak RSS < largest tensor + 300 MB
RANK, ALPHA = 16, 32

# --------------------------------------------------------------------------------------------
# The AIFS-shaped model
# --------------------------------------------------------------------------------------------

HIDDEN = 1024
MLP = 4 * HIDDEN
GRID = 40320  # rows of the per-grid-node trainable tensors (O96-ish grid)
GRID_COLS = 256  # (40320, 256) fp32 = 41 MB: the largest tensor
BLOCKS_AT_1GB = 18  # 18 blocks + encoder/decoder + grid tensors = 250 M params, 1.0 GB fp32
#: Leaf names of every nn.Linear: PEFT's target_modules (suffix match on ".<name>").
LINEAR_LEAVES = ["lin_q", "lin_k", "lin_v", "projection", "mlp.0", "mlp.2",
                 "emb_nodes_src", "emb_nodes_dst", "node_data_extractor"]


def build_model(size_gb: float) -> Any:
    """A torch module with anemoi's names: ``model.processor.proc.<i>.attention.lin_q`` ...,
    ``model.processor.proc.<i>.mlp.mlp.{0,2}``, ``model.encoder.emb_nodes_{src,dst}``,
    ``model.decoder.node_data_extractor``, layer norms, and two per-grid-node trainable tensors.
    Initialised by torch's own ``reset_parameters`` (what a user's model build costs)."""
    import torch
    from torch import nn

    blocks = max(1, round(BLOCKS_AT_1GB * size_gb))
    rows = max(1, round(GRID * size_gb))

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin_q, self.lin_k, self.lin_v, self.projection = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
            self.q_norm, self.k_norm = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)

    class MLPBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(HIDDEN, MLP), nn.GELU(), nn.Linear(MLP, HIDDEN))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer_norm_attention, self.layer_norm_mlp = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
            self.attention = Attention()
            self.mlp = MLPBlock()

    class NodeAttributes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.data = nn.Parameter(torch.randn(rows, GRID_COLS) * 0.02)
            self.hidden = nn.Parameter(torch.randn(rows, GRID_COLS) * 0.02)

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.node_attributes = NodeAttributes()
            self.encoder = nn.Module()
            self.encoder.emb_nodes_src = nn.Linear(HIDDEN, HIDDEN)
            self.encoder.emb_nodes_dst = nn.Linear(HIDDEN, HIDDEN)
            self.processor = nn.Module()
            self.processor.proc = nn.ModuleList(Block() for _ in range(blocks))
            self.decoder = nn.Module()
            self.decoder.node_data_extractor = nn.Linear(HIDDEN, HIDDEN)
            self.decoder.layer_norm = nn.LayerNorm(HIDDEN)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Inner()

    return Model()


def linear_names(model: Any) -> list[str]:
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

FILES = {"base": "base.anc", "base_st": "base.safetensors", "lora": "lora.anc", "lora_dir": "lora-peft",
         "ft": "finetuned.anc"}


def path(args: argparse.Namespace, key: str) -> Path:
    return args.workdir / FILES[key]


def out_path(args: argparse.Namespace, name: str) -> Path:
    return args.workdir / name


def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Write the inputs (not measured). Seeds make everything deterministic."""
    import anemoi_ckpt
    import anemoi_ckpt.convert
    import peft
    import safetensors
    import safetensors.torch
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    model = build_model(args.size_gb)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    anemoi_ckpt.save(path(args, "base"), sd)
    safetensors.torch.save_file(sd, str(path(args, "base_st")))
    lins = linear_names(model)
    largest = max(t.numel() * t.element_size() for t in sd.values())

    # The fine-tune: base + a random rank-16 delta + small noise on every linear weight.
    g = torch.Generator().manual_seed(args.seed + 7)
    ft = dict(sd)
    for m in lins:
        w = sd[f"{m}.weight"]
        out_f, in_f = w.shape
        low = (torch.randn(out_f, RANK, generator=g) @ torch.randn(RANK, in_f, generator=g)) * (0.02 / RANK ** 0.5)
        ft[f"{m}.weight"] = w + low + torch.randn(w.shape, generator=g) * args.noise
    anemoi_ckpt.save(path(args, "ft"), ft)
    del ft

    # A real PEFT LoRA adapter on every linear, lora_B randomised (PEFT initialises it to zeros).
    pm = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=LINEAR_LEAVES))
    g = torch.Generator().manual_seed(args.seed + 11)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    lora_dir = path(args, "lora_dir")
    shutil.rmtree(lora_dir, ignore_errors=True)
    pm.save_pretrained(str(lora_dir))
    n_lora = sum(1 for n, _ in pm.named_parameters() if "lora_A" in n)
    anemoi_ckpt.convert.convert(lora_dir, path(args, "lora"), base=path(args, "base"), progress=False)
    return {"tensors": len(sd), "parameters": sum(t.numel() for t in sd.values()),
            "bytes": tensor_bytes(sd), "largest_tensor": largest, "linears": len(lins),
            "lora_modules": n_lora, "linear_bytes": sum(tensor_bytes({n: sd[f"{n}.weight"]}) for n in lins),
            "anemoi_ckpt": H.package_origin(),
            "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__,
                         "peft": peft.__version__}}


# --------------------------------------------------------------------------------------------
# Child modes: each returns (seconds, extra)
# --------------------------------------------------------------------------------------------

def merge_ours(args: argparse.Namespace, durable: bool) -> tuple[float, dict[str, Any]]:
    from anemoi_ckpt.adapters import merge

    dst = out_path(args, f"{args.child}.anc")
    run = lambda: merge(path(args, "base"), [path(args, "lora")], dst, durable=durable, progress=False)  # noqa: E731
    seconds, report = profiled(args, run)
    return seconds, {"tensors_changed": len(report.tensors_changed), "output": str(dst)}


def copy_base(args: argparse.Namespace, durable: bool) -> tuple[float, dict[str, Any]]:
    """The plain copy: open the base, save its state dict (every tensor, zero-copy views)."""
    import anemoi_ckpt

    dst = out_path(args, f"{args.child}.anc")

    def run() -> int:
        with anemoi_ckpt.open(path(args, "base")) as ck:
            sd = ck.state_dict()
            anemoi_ckpt.save(dst, sd, durable=durable, progress=False)
            return len(sd)

    seconds, n = profiled(args, run)
    return seconds, {"tensors": n, "output": str(dst)}


def merge_peft(args: argparse.Namespace, durable: bool) -> tuple[float, dict[str, Any]]:
    """PEFT's path as a user writes it; each phase timed."""
    import safetensors.torch
    import torch
    from peft import PeftModel

    dst = out_path(args, f"{args.child}.safetensors")
    phases: dict[str, float] = {}

    def phase(key: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        value = fn()
        phases[key] = time.perf_counter() - t0
        return value

    def run() -> int:
        torch.manual_seed(args.seed)
        model = phase("build", lambda: build_model(args.size_gb))
        phase("load_base", lambda: model.load_state_dict(safetensors.torch.load_file(str(path(args, "base_st")))))
        pm = phase("from_pretrained", lambda: PeftModel.from_pretrained(model, str(path(args, "lora_dir"))))
        merged = phase("merge_and_unload", lambda: pm.merge_and_unload())
        sd = merged.state_dict()
        phase("save_file", lambda: safetensors.torch.save_file(sd, str(dst)))
        if durable:
            phase("fsync", lambda: H.fsync_path(dst))
        return len(sd)

    seconds, n = profiled(args, run)
    return seconds, {"tensors": n, "phases": phases, "output": str(dst)}


def split_run(args: argparse.Namespace, randomized: bool) -> tuple[float, dict[str, Any]]:
    from anemoi_ckpt.adapters import split

    dst = out_path(args, f"{args.child}.anc")
    run = lambda: split(path(args, "ft"), path(args, "base"), dst, rank=RANK,  # noqa: E731
                        randomized=randomized, progress=False)
    seconds, report = profiled(args, run)
    errs = [m.rel_error for m in report.modules]
    return seconds, {"modules": len(report.modules), "max_rank": report.max_rank,
                     "rel_error": report.rel_error, "max_module_rel_error": max(errs),
                     "output": str(dst)}


def profiled(args: argparse.Namespace, run: Any) -> tuple[float, Any]:
    """Time ``run``; under ``--profile`` also print its 20 most expensive functions."""
    return H.profiled(run, args.profile, args.child, top=20)


def check(args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    """Untimed correctness: every merged tensor against PEFT's merged state dict (kept from the
    last PEFT run), max |diff| <= 1e-5 x max |PEFT tensor|; plus the set of changed tensors."""
    import anemoi_ckpt
    import safetensors.torch

    ref = safetensors.torch.load_file(str(out_path(args, "peft.safetensors")))
    worst, worst_name, bad = 0.0, "", []
    with anemoi_ckpt.open(out_path(args, "merge.anc")) as ck, anemoi_ckpt.open(path(args, "base")) as bk:
        got, base = ck.state_dict(), bk.state_dict()
        if set(got) != set(ref):
            raise SystemExit(f"merged names differ from PEFT's: {sorted(set(got) ^ set(ref))[:5]}")
        changed = 0
        for k, want in ref.items():
            err = float((got[k].double() - want.double()).abs().max())
            rel = err / max(float(want.abs().max()), 1e-30)
            changed += not bool((base[k] == want).all())
            if got[k].dtype != want.dtype:
                bad.append(f"{k}: dtype {got[k].dtype} vs {want.dtype}")
            if rel > worst:
                worst, worst_name = rel, k
            if rel > 1e-5:
                bad.append(f"{k}: relative error {rel:.2e}")
    return 0.0, {"max_rel_error": worst, "worst_tensor": worst_name, "tensors": len(ref),
                 "changed_by_peft": changed, "failures": bad[:10], "pass": not bad}


CHILD_MODES = {
    "merge": lambda a: merge_ours(a, True),
    "merge-nofsync": lambda a: merge_ours(a, False),
    "copy": lambda a: copy_base(a, True),
    "copy-nofsync": lambda a: copy_base(a, False),
    "peft": lambda a: merge_peft(a, False),
    "peft-fsync": lambda a: merge_peft(a, True),
    "split": lambda a: split_run(a, True),
    "split-exact": lambda a: split_run(a, False),
    "check": check,
}


def child_main(args: argparse.Namespace) -> None:
    from bench_convert import CHILD_IMPORTS

    H.child_main(args.child, {mode: partial(fn, args) for mode, fn in CHILD_MODES.items()},
                 prepare=partial(child_prepare, args),
                 imports=(*CHILD_IMPORTS, "anemoi_ckpt.adapters", "peft"))


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------

def child_flags(args: argparse.Namespace) -> list[str]:
    return ["--workdir", str(args.workdir), "--size-gb", str(args.size_gb), "--seed", str(args.seed),
            "--noise", str(args.noise)]


def run_child(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    return H.run_child(__file__, mode, child_flags(args) + (["--profile"] if args.profile else []),
                       watch_memory=True)


def measure(args: argparse.Namespace, mode: str, label: str, keep_output: bool = False,
            repeat: int | None = None) -> Measurement:
    return H.measure(mode, label, partial(run_child, args, mode), args.repeat if repeat is None else repeat,
                     H.Quiet.of(args), keep_last_output=keep_output)


def print_table(results: dict[str, Measurement], rows: list[str], yard: str, title: str) -> None:
    ys = results[yard].seconds
    C = H.Column
    H.print_table([C(title, 44), C("median s", 9, ".2f"), C("vs " + yard, 12, ".2f", "x"),
                   C("peak RSS MB", 12, ".0f"), C("+RSS MB", 8, ".0f"), C("anon MB", 8, ".0f"),
                   C("file MB", 8, ".0f")],
                  [[m.label, m.seconds, H.ratio(m.seconds, ys), m.median("peak_rss") / MB, m.rss_increase / MB,
                    m.median("peak_anon_sampled") / MB, m.median("peak_file_sampled") / MB]
                   for m in (results[k] for k in rows)])


def check_targets(results: dict[str, Measurement], largest: int, ok_check: bool) -> list[dict[str, Any]]:
    r = {k: m.seconds for k, m in results.items()}
    limit_mb = (largest + RSS_ALLOWANCE) / MB
    mg = results["merge"]
    rand_err, exact_err = results["split"].extra("rel_error"), results["split-exact"].extra("rel_error")
    T = H.Target
    return H.check_targets([
        T("merge <= 1.5x plain copy (both durable)", r["merge"] / r["copy"], 1.5),
        T("  same, neither durable", r["merge-nofsync"] / r["copy-nofsync"], 1.5),
        T("merge >= 2x faster than PEFT (merge durable, PEFT not)", r["peft"] / r["merge"], 2.0, True),
        T("  same, both durable (PEFT + fsync)", r["peft-fsync"] / r["merge"], 2.0, True),
        T("  same, neither durable (merge durable=False)", r["peft"] / r["merge-nofsync"], 2.0, True),
        T("merge peak RSS < largest tensor + 300 MB", mg.median("peak_rss") / MB, limit_mb, unit="MB"),
        T("  (informative) anonymous peak < largest + 300 MB", mg.median("peak_anon_sampled") / MB,
          limit_mb, unit="MB"),
        # the whole-process peak includes the child's imports (~390 MB: torch, peft, safetensors),
        # already above the limit; this row bounds what the merge itself adds (README, P3 notes)
        T("  merge's own +RSS (peak - RSS after imports) < largest + 300 MB", mg.rss_increase / MB,
          limit_mb, unit="MB"),
        T("split: randomized SVD faster than full SVD", r["split-exact"] / r["split"], 1.0, True),
        T("  at equal error bound (randomized rel. error <= 1.01x full)", rand_err / exact_err, 1.01),
        T("merged weights == PEFT merge_and_unload (1e-5 relative)", float(ok_check), 1.0, True, unit=""),
    ], width=62)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    H.print_header(f"anemoi-ckpt adapter benchmark: --size-gb {args.size_gb}, --repeat {args.repeat}, "
                   f"workdir {args.workdir}")
    print("\nwriting the base, the PEFT adapter, its .anc and the fine-tune (once, not measured) ...", flush=True)
    res = H.run_process([sys.executable, str(Path(__file__).resolve()), "--child", "prepare", *child_flags(args)])
    prep, prep_s = res.last_json(), res.seconds
    prep["seconds"] = prep_s
    print(f"  imported anemoi_ckpt {prep['anemoi_ckpt']}; " +
          ", ".join(f"{k} {v}" for k, v in prep["versions"].items()))
    print(f"  {prep['tensors']} tensors, {prep['parameters'] / 1e6:.1f} M parameters, {prep['bytes'] / GB:.3f} GB "
          f"fp32; {prep['linears']} nn.Linear ({prep['linear_bytes'] / GB:.3f} GB of weights), "
          f"{prep['lora_modules']} LoRA modules r={RANK} alpha={ALPHA}; largest tensor "
          f"{prep['largest_tensor'] / MB:.1f} MB; prepared in {prep_s:.0f} s")
    files = [path(args, k) for k in ("base", "base_st", "lora", "ft")]
    files += sorted(p for p in path(args, "lora_dir").iterdir() if p.is_file())
    H.settle()
    for p in files:
        H.evict(p)
    warmed = H.warm_page_cache(files)
    print(f"page cache warmed: inputs synced, evicted and read once ({warmed / GB:.2f} GB)")

    results: dict[str, Measurement] = {}
    print("\nmerge (rank-16 LoRA on every linear) ...")
    for mode, label, keep in [
        ("merge", "ours: merge (durable)", True),
        ("merge-nofsync", "ours: merge(durable=False)", False),
        ("copy", "plain copy: open + save (durable)", False),
        ("copy-nofsync", "plain copy: open + save(durable=False)", False),
        ("peft", "PEFT: build+load+merge_and_unload+save_file", True),
        ("peft-fsync", "PEFT + fsync", False),
    ]:
        results[mode] = measure(args, mode, label, keep_output=keep)
    print("\ncorrectness (untimed): merged.anc against PEFT's merged state dict ...")
    saved_profile, args.profile = args.profile, False
    chk = run_child(args, "check")["extra"]
    args.profile = saved_profile
    for name in ("merge.anc", "peft.safetensors"):
        out_path(args, name).unlink(missing_ok=True)
    print(f"  {'PASS' if chk['pass'] else 'FAIL'}  {chk['tensors']} tensors, {chk['changed_by_peft']} changed by "
          f"PEFT's merge; max relative error {chk['max_rel_error']:.2e} "
          f"({chk['worst_tensor'] or 'bit-identical'})"
          + (f"; failures: {chk['failures']}" if chk["failures"] else ""))
    print(f"\nsplit at rank {RANK} (fine-tune = base + rank-{RANK} delta + N(0, {args.noise}^2) noise on every linear) ...")
    for mode, label in [("split", f"split rank={RANK}, randomized SVD (default)"),
                        ("split-exact", f"split rank={RANK}, full SVD (randomized=False)")]:
        results[mode] = measure(args, mode, label,
                                repeat=args.exact_repeat if mode == "split-exact" else None)

    print_table(results, ["merge", "merge-nofsync", "copy", "copy-nofsync", "peft", "peft-fsync"], "copy", "merge")
    print_table(results, ["split", "split-exact"], "split-exact", "split")
    print("(peak RSS = ru_maxrss (os.wait4), page cache mapped by the process included; +RSS = peak minus "
          "RSS after imports;\n anon / file = peaks of RssAnon / RssFile sampled every 10 ms)")
    ph = {k: statistics.median(s["extra"]["phases"][k] for s in results["peft"].samples)
          for k in results["peft"].samples[0]["extra"]["phases"]}
    tot = sum(ph.values())
    print("PEFT phases (median s): " + ", ".join(f"{k} {v:.2f} ({v / tot:.0%})" for k, v in ph.items()))
    for mode in ("split", "split-exact"):
        m = results[mode]
        print(f"{m.label}: {m.extra('modules')} modules, max rank {m.extra('max_rank')}, relative error "
              f"{m.extra('rel_error'):.6f} overall, {m.extra('max_module_rel_error'):.6f} worst module")
    print(f"\ntargets (largest tensor {prep['largest_tensor'] / MB:.1f} MB; plain copy = anemoi_ckpt.open + "
          f"anemoi_ckpt.save(ck.state_dict()))")
    targets = check_targets(results, prep["largest_tensor"], chk["pass"])
    print(H.background_line((s["background_cpu"] for m in results.values() for s in m.samples),
                            args.max_background))
    return {"config": {"size_gb": args.size_gb, "repeat": args.repeat, "seed": args.seed, "noise": args.noise,
                       **H.environment()},
            "prepare": prep, "check": chk,
            "results": {k: m.to_json() for k, m in results.items()},
            "targets": targets}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_common_args(p, size_gb=1.0, size_help="size of the base model in fp32", workdir=DEFAULT_WORKDIR,
                      profile_help="every timed operation")
    p.add_argument("--noise", type=float, default=1e-4,
                   help="std of the dense noise added to the fine-tune's linear weights (default 1e-4)")
    p.add_argument("--exact-repeat", type=int, default=1,
                   help="runs of the slow full-SVD split (default 1; its time is minutes at 1 GB)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def cleanup() -> None:
        for mode in CHILD_MODES:
            for suffix in (".anc", ".safetensors"):
                out_path(args, mode + suffix).unlink(missing_ok=True)
        if not args.keep:
            for key in ("base", "base_st", "lora", "ft"):
                path(args, key).unlink(missing_ok=True)
            shutil.rmtree(path(args, "lora_dir"), ignore_errors=True)
            with_contents = list(args.workdir.iterdir()) if args.workdir.exists() else []
            if not with_contents:
                args.workdir.rmdir()

    H.main_flow(args, lambda: child_main(args), lambda: run_benchmark(args), cleanup)


if __name__ == "__main__":
    main()
