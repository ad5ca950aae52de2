#!/usr/bin/env python
"""Remote reads: bytes on the wire and time for a 1 GB ``.anc`` over HTTP (and S3 with ``--s3``).

The issue's targets: ``inspect`` and ``lineage`` of a remote 1 GB ``.anc`` transfer under 1 MB;
loading 10% of its tensors transfers about 10% of its bytes. The file is served from loopback by
the tests' range server (``tests/servers.py``: HTTP/1.1, single ranges, keep-alive) or by moto's
S3 server mode; a TCP proxy in front counts every byte the server sent, HTTP headers included.

The peer is what a pickle or a whole-file registry needs: the whole file over the same server
(fsspec ``cat_file``) then ``torch.load`` / ``safetensors.torch.load`` of the bytes. The peer for
the full load is the same transfer of a ``.safetensors`` holding the same tensors.

Run from the repository root::

    .venv/bin/python benchmarks/bench_remote.py                 # 1 GB over HTTP, 3 repeats
    .venv/bin/python benchmarks/bench_remote.py --s3            # and over S3 (moto)
    .venv/bin/python benchmarks/bench_remote.py --size-gb 0.1   # quick check
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import _harness as H  # noqa: E402
import bench_container as bc  # noqa: E402  (the AIFS-like state dict)
from tests.servers import CountingProxy, MotoS3, RangeServer, s3_env  # noqa: E402

MB = 1 << 20


def write_files(folder: Path, size_gb: float) -> dict[str, Any]:
    import anemoi_ckpt
    import safetensors.torch

    sd = bc.make_state_dict(size_gb, seed=0)
    anemoi_ckpt.save(folder / "parent.anc", {"w": sd[next(iter(sd))][:4].clone()}, kind="training")
    anemoi_ckpt.save(folder / "model.anc", sd, kind="inference", parents=[folder / "parent.anc"],
                     operation="convert", metadata={"description": "bench_remote"}, durable=False)
    safetensors.torch.save_file(sd, str(folder / "model.safetensors"))
    sizes = {n: t.numel() * t.element_size() for n, t in sd.items()}
    return {"tensors": sizes, "size": (folder / "model.anc").stat().st_size}


def measure(proxy: CountingProxy, fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Median time and bytes on the wire of ``repeat`` in-process runs against the same server."""
    def wire() -> int:
        time.sleep(0.05)  # let the proxy count the last packets
        return proxy.bytes_down

    times, sent, _ = H.sample_runs(fn, repeat, before=proxy.reset, after=wire)
    return {"s": statistics.median(times), "bytes": statistics.median(sent)}


def run(url_of: Callable[[str], str], proxy: CountingProxy, info: dict[str, Any], args: argparse.Namespace,
        label: str) -> list[tuple[str, dict[str, float], dict[str, float] | None, float | None]]:
    import fsspec.core
    import safetensors.torch
    import torch

    import anemoi_ckpt
    from anemoi_ckpt.lineage.view import check_lineage
    from anemoi_ckpt.summary import summarize

    model = url_of("model.anc")
    names = sorted(info["tensors"])
    # "10% of the tensors", two ways: a random tenth of them by count (mostly small ones: norms and
    # biases), and random tensors until they hold a tenth of the bytes (the proportionality target).
    by_count = random.Random(1).sample(names, max(1, len(names) // 10))
    by_bytes: list[str] = []
    for n in random.Random(2).sample(names, len(names)):
        if sum(info["tensors"][m] for m in by_bytes) + info["tensors"][n] <= 0.1 * info["size"]:
            by_bytes.append(n)

    def inspect() -> None:
        with anemoi_ckpt.open(model) as ck:
            summarize(ck)

    def lineage() -> None:
        with anemoi_ckpt.open(model) as ck:
            check_lineage(ck.lineage, model, ck.uuid)

    def partial(chosen: list[str], ahead: bool) -> Callable[[], None]:
        def fn() -> None:
            with anemoi_ckpt.open(model) as ck:
                if ahead:  # the names up front: neighbours share requests, all in flight at once
                    ck.read_ahead(names=chosen)
                for n in chosen:
                    ck.tensors()[n].sum()
        return fn

    def full() -> None:
        with anemoi_ckpt.open(model) as ck:
            ck.read_ahead()
            for t in ck.tensors().values():
                t.sum()

    def whole(name: str) -> Callable[[], Any]:
        def fn() -> Any:
            fs, path = fsspec.core.url_to_fs(url_of(name))
            data = fs.cat_file(path)
            if name.endswith(".safetensors"):
                for t in safetensors.torch.load(data).values():
                    t.sum()
            return len(data)
        return fn

    torch.set_num_threads(1)
    rows = []
    peer_whole = measure(proxy, whole("model.anc"), args.repeat)
    rows.append((f"{label} inspect", measure(proxy, inspect, args.repeat), peer_whole, None))
    rows.append((f"{label} lineage", measure(proxy, lineage, args.repeat), peer_whole, None))
    for what, chosen in (("10% of tensors", by_count), ("10% of bytes", by_bytes)):
        for ahead in (False, True):
            rows.append((f"{label} {what}{' ahead' if ahead else ''}",
                         measure(proxy, partial(chosen, ahead), args.repeat), peer_whole,
                         sum(info["tensors"][n] for n in chosen)))
    rows.append((f"{label} full load", measure(proxy, full, args.repeat),
                 measure(proxy, whole("model.safetensors"), args.repeat), None))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--s3", action="store_true", help="also serve the files from moto's S3 server "
                   "(slow at 1 GB: moto's own per-request cost dominates the S3 timings)")
    args = p.parse_args()
    print(f"anemoi_ckpt {H.package_origin()}")
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        folder = Path(tmp)
        info = write_files(folder, args.size_gb)
        print(f"model.anc: {info['size'] / 1e9:.3f} GB, {len(info['tensors'])} tensors")
        rows = []
        with RangeServer(folder) as srv:
            proxy = CountingProxy(srv.port)
            rows += run(lambda n: srv.url(n, proxy.port), proxy, info, args, "http")
            proxy.close()
        if args.s3:
            rows += run_s3(folder, info, args)
    print_rows(rows, info)


def run_s3(folder: Path, info: dict[str, Any], args: argparse.Namespace) -> list:
    import boto3
    import fsspec.config

    server = MotoS3()
    proxy = CountingProxy(server.port)
    try:
        env = s3_env(f"http://127.0.0.1:{proxy.port}")
        os.environ.update(env)
        fsspec.config.conf["s3"] = {"endpoint_url": env["FSSPEC_S3_ENDPOINT_URL"]}
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        for name in ("model.anc", "model.safetensors"):
            client.upload_file(str(folder / name), "bench", name)
        return run(lambda n: f"s3://bench/{n}", proxy, info, args, "s3")
    finally:
        proxy.close()
        server.close()


def print_rows(rows: list, info: dict[str, Any]) -> None:
    size = info["size"]
    print(f"\n{'measurement':<28} {'on the wire':>14} {'% of file':>10} {'peer (whole file)':>18} "
          f"{'bytes ratio':>12} {'time ratio':>11}")
    for label, ours, peer, chosen in rows:
        pct = 100 * ours["bytes"] / size
        print(f"{label:<28} {ours['bytes'] / MB:>11.3f} MB {pct:>9.3f}% {peer['bytes'] / MB:>15.1f} MB "
              f"{ours['bytes'] / peer['bytes']:>12.5f} {H.ratio(ours['s'], peer['s']):>10.3f}x")
        if chosen is not None:
            print(f"{'':<28} tensors asked for: {chosen / MB:.1f} MB = {100 * chosen / size:.2f}% of "
                  f"the file; transferred / asked = {ours['bytes'] / chosen:.4f}")
    print(f"peak RSS {H.peak_rss() / MB:.0f} MB")
    print("\ntargets:")
    for label, ours, _, chosen in rows:
        if label.endswith(("inspect", "lineage")):
            ok = ours["bytes"] < MB
            print(f"  {label}: {ours['bytes'] / 1e6:.3f} MB < 1 MB: {'PASS' if ok else 'FAIL'}")
        if chosen is not None:
            ok = chosen <= ours["bytes"] <= chosen * 1.02 + MB
            print(f"  {label}: {100 * ours['bytes'] / size:.2f}% of the bytes for "
                  f"{100 * chosen / size:.2f}% asked: {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
