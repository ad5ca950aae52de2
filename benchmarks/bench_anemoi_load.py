#!/usr/bin/env python
"""Time to a ready anemoi model: ``load_model(model.anc)`` against ``torch.load`` of the pickle.

Issue 7's question: how long until anemoi-inference has a model to run, and how much memory does
it take, when the model is built from an ``.anc`` by the installed anemoi-models instead of being
unpickled?

Setup (not timed): an **AIFS-shaped** ``AnemoiModelInterface`` built by anemoi-models from the
configuration of the real graphtransformer fixture (``fixtures/legacy/anemoi/graphtransformer``)
with AIFS's widths: GraphTransformer encoder and decoder, a 16-layer Transformer processor,
1024 channels, 16 heads (``--channels``, ``--layers``, ``--heads``), on a synthetic graph of
``--grid`` data nodes (default 40320, the o96 grid; AIFS's N320 is 542080) and ``--hidden`` hidden
nodes, 4 encoder and 3 decoder edges per data node. About 230 M parameters, 0.9 GB in fp32. It is
saved as anemoi-training saves an inference checkpoint (``torch.save`` of the interface with its
config, metadata and supporting arrays set to None, then anemoi-utils ``save_metadata``), and that
pickle is converted to an ``.anc`` with ``anemoi_ckpt.convert.convert``.

Measured, each in a fresh process after the imports (torch, anemoi.models, anemoi_ckpt), median
of ``--repeat``, the files warm in the page cache and then cold (evicted with
``posix_fadvise(DONTNEED)``):

- **pickle**: ``torch.load(path, map_location="cpu", weights_only=False)`` then ``.eval()``, what
  anemoi-inference's ``Runner.model`` does;
- **anc**: ``anemoi_ckpt.anemoi.load_model(path)``, what the ``anc`` runner does;
- for each, **all read**: the time to the ready model plus reading every byte of its state dict
  and buffers once (a checksum; an ``.anc``'s weights are mapped and paged in on first use, so
  part of its loading moves to the first forward pass; this column keeps the comparison honest,
  and the two checksums must agree).

Peak RSS is the child's ``ru_maxrss`` (``os.wait4``); ``+RSS`` is that minus the RSS after the
imports. Needs the anemoi environment (``make test-anemoi`` builds ``.venv-anemoi``)::

    .venv-anemoi/bin/python benchmarks/bench_anemoi_load.py                 # AIFS-shaped, 3 repeats
    .venv-anemoi/bin/python benchmarks/bench_anemoi_load.py --channels 256 --layers 4 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness as H  # noqa: E402
from _harness import MB  # noqa: E402

REPO = HERE.parent
FIXTURE = REPO / "fixtures" / "legacy" / "anemoi" / "graphtransformer" / "last.ckpt"

# ---------------------------------------------------------------------------------------- setup
def aifs_config(md: dict[str, Any], channels: int, layers: int, heads: int) -> dict[str, Any]:
    """The fixture's resolved training config with AIFS's widths and depth."""
    cfg = json.loads(json.dumps(md["config"]))
    model = cfg["model"]
    model["num_channels"] = channels
    proc = model["processor"]
    proc.update(num_channels=channels, num_layers=layers, num_heads=heads)
    for group in ("encoders", "decoders"):
        for entry in model[group].values():
            entry["mapper"].update(num_channels=channels, num_heads=heads)
    return cfg


def synthetic_graph(grid: int, hidden: int, seed: int) -> Any:
    """A ``HeteroData`` shaped like anemoi-graphs' output: node coordinates in radians, encoder
    (4 per data node) and decoder (3 per data node) edges with ``edge_length`` and ``edge_dirs``."""
    import torch
    from torch_geometric.data import HeteroData

    gen = torch.Generator().manual_seed(seed)
    graph = HeteroData()
    for name, n in (("data", grid), ("hidden", hidden)):
        lat = torch.asin(torch.rand(n, generator=gen) * 2 - 1)
        lon = torch.rand(n, generator=gen) * 2 * torch.pi
        graph[name].x = torch.stack([lat, lon], dim=1)
    for (src, dst), per_node in ((("data", "hidden"), 4), (("hidden", "data"), 3)):
        data_side = torch.arange(grid).repeat_interleave(per_node)
        other = torch.randint(0, hidden, (grid * per_node,), generator=gen)
        index = torch.stack([data_side, other]) if src == "data" else torch.stack([other, data_side])
        e = graph[(src, "to", dst)]
        e.edge_index = index
        e.edge_length = torch.rand(index.shape[1], 1, generator=gen)
        e.edge_dirs = torch.randn(index.shape[1], 2, generator=gen)
    return graph


def prepare(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    import torch
    from anemoi.models.interface import AnemoiModelInterface
    from anemoi.utils.checkpoints import save_metadata
    from omegaconf import OmegaConf

    import anemoi_ckpt
    from anemoi_ckpt.anemoi.load import _data_indices, _n_steps, _statistics
    from anemoi_ckpt.convert import convert

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tag = f"c{args.channels}-l{args.layers}-g{args.grid}-h{args.hidden}"
    pickle_path, anc_path = work / f"aifs-{tag}.ckpt", work / f"aifs-{tag}.anc"
    info_path = work / f"aifs-{tag}.json"
    if pickle_path.exists() and anc_path.exists() and info_path.exists():
        return pickle_path, anc_path, json.loads(info_path.read_text())

    fixture_anc = work / "fixture-graphtransformer.anc"
    convert(FIXTURE, fixture_anc)
    with anemoi_ckpt.open(fixture_anc) as ck:
        md = json.loads(json.dumps(ck.anemoi_metadata))
        arrays = dict(ck.supporting_arrays)
    md["config"] = aifs_config(md, args.channels, args.layers, args.heads)
    config = OmegaConf.create(md["config"])
    n_in, n_out = _n_steps(config, md, str(fixture_anc))
    indices = _data_indices(config, md, str(fixture_anc))
    torch.manual_seed(args.seed)
    model = AnemoiModelInterface(
        config=config, n_step_input=n_in, n_step_output=n_out,
        graph_data=synthetic_graph(args.grid, args.hidden, args.seed),
        statistics=_statistics(indices), data_indices=indices, metadata=md, supporting_arrays={},
    )
    n_params = sum(p.numel() for p in model.parameters())
    # as anemoi-training's AnemoiCheckpoint writes inference-<name>.ckpt
    model.config = model.metadata = model.supporting_arrays = None
    tmp = pickle_path.with_suffix(".tmp")
    torch.save(model, tmp)
    # the supporting arrays describe the fixture's 200-point grid; only their presence matters here
    save_metadata(tmp, md, supporting_arrays={k: v for k, v in arrays.items()})
    os.replace(tmp, pickle_path)
    del model
    convert(pickle_path, anc_path)
    info = {"parameters": n_params, "pickle_bytes": pickle_path.stat().st_size,
            "anc_bytes": anc_path.stat().st_size}
    info_path.write_text(json.dumps(info))
    return pickle_path, anc_path, info


# ---------------------------------------------------------------------------------------- child
def load_and_read(mode: str, path: str) -> tuple[float, dict[str, Any]]:
    """Time to a ready model, then to every byte of it read once; run after the imports."""
    import warnings

    import torch

    from anemoi_ckpt.anemoi import load_model

    t0 = time.perf_counter()
    if mode == "pickle":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.load(path, map_location="cpu", weights_only=False)
        model.eval()
    else:
        model = load_model(path)
    t1 = time.perf_counter()
    # every byte of every parameter and buffer read once: an .anc's weights are mapped and paged
    # in on first use, so this moves the rest of its loading into the measurement
    with torch.no_grad():
        checksum = sum(float(t.double().sum()) for t in model.state_dict().values())
        checksum += sum(float(b.double().sum()) for b in model.buffers())
    t2 = time.perf_counter()
    return t1 - t0, {"first_step_s": t2 - t0, "checksum": checksum}


def child(mode: str, path: str) -> None:
    # both sides pay the same imports before timing
    H.child_main(mode, {mode: lambda: load_and_read(mode, path)},
                 imports=["anemoi.models.interface", "anemoi_ckpt.anemoi"])


def run_child(mode: str, path: Path, seed: int, cold: bool) -> dict[str, Any]:
    if cold:
        H.evict(path)
    r = H.run_child(__file__, mode, ["--path", str(path), "--seed", str(seed)])
    return {"ready_s": r["seconds"], "first_step_s": r["extra"]["first_step_s"], "base_rss": r["rss_post_import"],
            "checksum": r["extra"]["checksum"], "peak_rss": r["peak_rss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--grid", type=int, default=40320)
    ap.add_argument("--hidden", type=int, default=10242)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(HERE / "out" / "anemoi-load"))
    ap.add_argument("--json", help="also write every sample and the medians here")
    ap.add_argument("--child", choices=["pickle", "anc"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.path)

    import anemoi.models
    import torch

    print(f"anemoi_ckpt {H.package_origin()}; "
          f"anemoi-models {anemoi.models.__version__}; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs", flush=True)
    setup_s, (pickle_path, anc_path, info) = H.timed(lambda: prepare(args))
    print(f"model: {info['parameters'] / 1e6:.1f} M parameters; pickle {info['pickle_bytes'] / MB:.0f} MB, "
          f".anc {info['anc_bytes'] / MB:.0f} MB (setup {setup_s:.0f} s)", flush=True)

    paths = {"pickle": pickle_path, "anc": anc_path}
    samples: dict[str, list[dict[str, Any]]] = {}
    for cache in ("warm", "cold"):
        if cache == "warm":  # one untimed pass of each brings both files into the page cache
            for mode in paths:
                run_child(mode, paths[mode], args.seed, cold=False)
        for _ in range(args.repeat):
            for mode in paths:  # interleaved, so slow spells of a shared machine hit both
                r = run_child(mode, paths[mode], args.seed, cold=cache == "cold")
                samples.setdefault(f"{mode}/{cache}", []).append(r)
    checks = {s["checksum"] for runs in samples.values() for s in runs}
    if len(checks) != 1:
        raise SystemExit(f"the two loads disagree on the model's tensors: {sorted(checks)}")

    med = {k: {m: statistics.median(s[m] for s in runs) for m in ("ready_s", "first_step_s", "peak_rss", "base_rss")}
           for k, runs in samples.items()}
    print(f"\n{'':12} {'ready s':>8} {'+read all s':>11} {'peak RSS MB':>12} {'+RSS MB':>8}")
    for key, m in med.items():
        print(f"{key:12} {m['ready_s']:8.2f} {m['first_step_s']:11.2f} {m['peak_rss'] / MB:12.0f} "
              f"{(m['peak_rss'] - m['base_rss']) / MB:8.0f}")
    print()
    for cache in ("warm", "cold"):
        a, p = med[f"anc/{cache}"], med[f"pickle/{cache}"]
        print(f"{cache}: ready {H.ratio(a['ready_s'], p['ready_s']):.2f}x torch.load, "
              f"ready+read all {H.ratio(a['first_step_s'], p['first_step_s']):.2f}x, "
              f"peak RSS {H.ratio(a['peak_rss'], p['peak_rss']):.2f}x "
              f"(+RSS {(a['peak_rss'] - a['base_rss']) / max(1, p['peak_rss'] - p['base_rss']):.2f}x)")
    H.write_json({"info": info, "samples": samples, "medians": med}, args.json)


if __name__ == "__main__":
    main()
