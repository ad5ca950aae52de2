#!/usr/bin/env python
"""Does msgpack earn its place? JSON as we write it against msgpack for the largest JSON members.

A training ``.anc`` of a many-tensor model (``--tensors`` parameters, default 5,000: several times
AIFS's ~1,000) is written with the Writer, laid out as ``convert`` writes a Lightning checkpoint:
``weights`` (one tensor per parameter), ``optimizer`` (``<name>.exp_avg``, ``.exp_avg_sq`` and
``.step`` per parameter, as torch 2.x keeps ``step`` as a tensor) and the ``training-state``
document (every parameter named in the optimizer's param groups). Its two largest JSON members,
``manifest.json`` (one sha256 per tensor: 4 x ``--tensors`` digests) and
``documents/training-state.json``, are read back, and each is encoded and decoded as:

- ``json``: ``writer._json_bytes`` (what the writer writes) and ``json.loads`` with the reader's
  duplicate-key hook (what the reader runs); plain ``json.loads`` is shown beside it;
- ``msgpack``: ``packb`` / ``unpackb`` with the same duplicate-key hook, as a reader would need
  (docs/format.md 4.2 refuses duplicate keys); without it on the next row;
- ``msgpack, binary digests``: the best msgpack could do with a format change, every 64-hex-digit
  digest stored as 32 raw bytes;
- ``json + zstd -3`` / ``msgpack + zstd -3``: the encoding, then zstandard level 3 (one frame).

For scale, the open time of the file (``anemoi_ckpt.open`` + close: manifest digest, parse,
validation, every tensor table checked) is timed too. Medians of ``--repeat`` in-process runs,
after a warm-up. See benchmarks/README.md, "msgpack".

    .venv/bin/python benchmarks/bench_msgpack.py                  # 5,000 parameters: ~20 s
    .venv/bin/python benchmarks/bench_msgpack.py --tensors 500 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import importlib.util
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness as H  # noqa: E402

HEX64 = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
ZSTD_LEVEL = 3
# What "clearly wins" means here: at least this much smaller AND faster (encode + decode) than
# JSON, on a document whose handling is a noticeable part of opening the file.
CLEAR_WIN = 0.5


def parameter_names(n: int) -> list[str]:
    """AIFS-like parameter names (processor blocks of 16 tensors each), ``n`` of them."""
    per_block = ["attention.lin_q.weight", "attention.lin_k.weight", "attention.lin_v.weight",
                 "attention.lin_self.weight", "attention.lin_self.bias", "mlp.0.weight", "mlp.0.bias",
                 "mlp.2.weight", "mlp.2.bias", "layer_norm_attention.weight", "layer_norm_attention.bias",
                 "layer_norm_mlp.weight", "layer_norm_mlp.bias", "attention.lin_q.bias",
                 "attention.lin_k.bias", "attention.lin_v.bias"]
    return [f"model.processor.proc.{i // 256}.blocks.{(i // 16) % 16}.{per_block[i % 16]}" for i in range(n)]


def write_training_file(path: Path, n: int) -> None:
    """The many-tensor training file. Tensors are one element each but all different, so every
    digest differs (identical digests would flatter a compressor)."""
    import torch

    import anemoi_ckpt

    names = parameter_names(n)
    with anemoi_ckpt.Writer(path, kind="training", progress=None) as w:
        for i, name in enumerate(names):
            w.add(name, torch.tensor([i * 1e-3], dtype=torch.float32))
        for i, name in enumerate(names):
            w.add(f"{name}.exp_avg", torch.tensor([i * 1e-7], dtype=torch.float32), section="optimizer")
            w.add(f"{name}.exp_avg_sq", torch.tensor([i * 1e-12], dtype=torch.float32), section="optimizer")
            w.add(f"{name}.step", torch.tensor(1200.0 + i), section="optimizer")
        w.add_document("training-state", {
            "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.6.0",
            "loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 1200}}},
            "optimizers": [{"section": "optimizer", "names": "by-parameter", "scalar_state": {},
                            "param_groups": [{"lr": 6.25e-5, "betas": [0.9, 0.95], "eps": 1e-8,
                                              "weight_decay": 0.1, "amsgrad": False, "initial_lr": 6.25e-4,
                                              "params": names}]}]})


def members(path: Path) -> dict[str, bytes]:
    """The raw bytes of the manifest and the training-state document (STORED members)."""
    with zipfile.ZipFile(path) as zf:
        out = {}
        for info in zf.infolist():
            for wanted in ("manifest.json", "documents/training-state.json"):
                if info.filename.endswith("/" + wanted):
                    out[wanted] = zf.read(info)
    return out


def binary_digests(obj: Any) -> Any:
    """``obj`` with every sha256 hex string as 32 raw bytes (msgpack ``bin``): the format change
    msgpack would need to shrink digests at all."""
    if isinstance(obj, dict):
        return {k: binary_digests(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [binary_digests(v) for v in obj]
    if isinstance(obj, str) and HEX64.match(obj):
        return bytes.fromhex(obj.removeprefix("sha256:"))
    return obj


def codecs() -> dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]:
    """encoding name -> (encode, decode), each as the file's writer / reader would run it."""
    import msgpack
    import zstandard

    from anemoi_ckpt.reader import _unique_keys
    from anemoi_ckpt.writer import _json_bytes

    cctx, dctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL), zstandard.ZstdDecompressor()

    def json_dec(b: bytes) -> Any:
        return json.loads(b.decode("utf-8"), object_pairs_hook=_unique_keys)

    def mp_enc(o: Any) -> bytes:
        return msgpack.packb(o, use_bin_type=True)

    def mp_dec(b: bytes) -> Any:
        return msgpack.unpackb(b, raw=False, object_pairs_hook=_unique_keys)

    return {
        "json (as written/read)": (_json_bytes, json_dec),
        "json, plain json.loads": (_json_bytes, lambda b: json.loads(b)),
        "msgpack": (mp_enc, mp_dec),
        "msgpack, no duplicate check": (mp_enc, lambda b: msgpack.unpackb(b, raw=False)),
        "msgpack, binary digests": (lambda o: mp_enc(binary_digests(o)), mp_dec),
        f"json + zstd -{ZSTD_LEVEL}": (lambda o: cctx.compress(_json_bytes(o)),
                                       lambda b: json_dec(dctx.decompress(b))),
        f"msgpack + zstd -{ZSTD_LEVEL}": (lambda o: cctx.compress(mp_enc(o)),
                                          lambda b: mp_dec(dctx.decompress(b))),
    }


def measure_document(name: str, obj: Any, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for enc_name, (enc, dec) in codecs().items():
        enc_s, data = H.median_time(lambda: enc(obj), repeat)
        dec_s, back = H.median_time(lambda: dec(data), repeat)
        if enc_name != "msgpack, binary digests":  # the others must round-trip exactly
            assert back == obj, f"{enc_name} did not round-trip {name}"
        rows.append({"document": name, "encoding": enc_name, "bytes": len(data),
                     "encode_s": enc_s, "decode_s": dec_s})
    base = rows[0]
    for r in rows:
        r["size_vs_json"] = r["bytes"] / base["bytes"]
        r["time_vs_json"] = (r["encode_s"] + r["decode_s"]) / (base["encode_s"] + base["decode_s"])
    return rows


def open_time(path: Path, repeat: int) -> float:
    import anemoi_ckpt

    def run() -> None:
        anemoi_ckpt.open(path).close()

    return H.median_time(run, repeat)[0]


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    H.print_header(f"msgpack vs JSON: --tensors {args.tensors}, --repeat {args.repeat}")
    print(f"anemoi_ckpt {H.package_origin()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "many-tensors-training.anc"
        write_training_file(path, args.tensors)
        raw = members(path)
        file_bytes = path.stat().st_size
        opened = open_time(path, args.repeat)
    print(f"training file: {args.tensors} parameters, {4 * args.tensors} tensors, {file_bytes / H.MB:.2f} MB; "
          f"open + close {opened * 1e3:.1f} ms (median)")
    rows = []
    for name, data in raw.items():
        rows += measure_document(name, json.loads(data), args.repeat)
    C = H.Column
    H.print_table(
        [C("document", 30), C("encoding", 26), C("bytes", 10, ",.0f"), C("size/json", 10, ".2f", "x"),
         C("encode ms", 10, ".2f"), C("decode ms", 10, ".2f"), C("time/json", 10, ".2f", "x")],
        [[r["document"], r["encoding"], r["bytes"], r["size_vs_json"], r["encode_s"] * 1e3,
          r["decode_s"] * 1e3, r["time_vs_json"]] for r in rows],
        note="(time/json = (encode + decode) / JSON's as written and read; decode of every row checks "
             "duplicate keys, as the reader's JSON does, except 'plain json.loads' and 'no duplicate check')")
    manifest_json = next(r for r in rows if r["document"] == "manifest.json")
    mp = next(r for r in rows if r["document"] == "manifest.json" and r["encoding"] == "msgpack")
    share = manifest_json["decode_s"] / opened
    print(f"\nmanifest JSON decode = {share:.0%} of the file's open time ({manifest_json['decode_s'] * 1e3:.1f} of "
          f"{opened * 1e3:.1f} ms); msgpack would save {(manifest_json['decode_s'] - mp['decode_s']) * 1e3:.1f} ms "
          f"of it and {manifest_json['bytes'] - mp['bytes']:,} bytes ({1 - mp['size_vs_json']:.0%})")
    wins = [r for r in rows if r["encoding"] == "msgpack" and r["size_vs_json"] <= CLEAR_WIN
            and r["time_vs_json"] <= CLEAR_WIN]
    verdict = "msgpack wins clearly" if wins else "msgpack does not win clearly: remove it"
    print(f"verdict: {verdict} (clear = at most {CLEAR_WIN:.0%} of JSON's size and of its time)")
    return {"config": {"tensors": args.tensors, "repeat": args.repeat, **H.environment()},
            "file_bytes": file_bytes, "open_seconds": opened, "rows": rows, "verdict": verdict}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tensors", type=int, default=5000, help="parameters of the model (default 5000)")
    p.add_argument("--repeat", type=int, default=7, help="runs per measurement; the median is kept (default 7)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write every result here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if importlib.util.find_spec("msgpack") is None:
        sys.exit("bench_msgpack.py: msgpack is not installed (it is no dependency of anemoi-ckpt): "
                 ".venv/bin/pip install msgpack")
    H.write_json(run_benchmark(args), args.json)


if __name__ == "__main__":
    main()
