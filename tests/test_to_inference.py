"""Training -> inference: `convert --to inference` from a training .anc or straight from a
Lightning checkpoint; weight-averaged copies; casts with exceptions; refusals."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

import anemoi_ckpt
from anemoi_ckpt.convert import convert
from tests.conftest import FIXTURES, run_cli
from tests.test_lightning import C, Forecaster

GNN = FIXTURES / "legacy" / "anemoi" / "gnn" / "last.ckpt"


@pytest.fixture(scope="module")
def training_anc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "last.anc"
    convert(GNN, out, durable=False)
    return out


def test_training_anc_to_inference(training_anc: Path, tmp_path: Path) -> None:
    report = convert(training_anc, tmp_path / "inference.anc", to="inference")
    assert report.kind == "inference" and report.verified_by == "digest" and report.weights == "raw"
    assert report.copied == ["weights", "graph"]  # unchanged sections: copied and hashed in one pass
    with anemoi_ckpt.open(training_anc) as tr, anemoi_ckpt.open(tmp_path / "inference.anc") as inf:
        assert inf.kind == "inference" and inf.tensor_sections() == ["weights", "graph"]
        assert inf.documents() == []
        assert inf.content_id == tr.content_id
        for section in ("weights", "graph"):
            a, b = tr.tensors(section), inf.tensors(section)
            assert set(a) == set(b) and a.aliases == b.aliases
            assert all(torch.equal(a[n], b[n]) and a[n].dtype == b[n].dtype for n in a)
        assert inf.anemoi_metadata == tr.anemoi_metadata | {"supporting_arrays_paths": inf.anemoi_metadata["supporting_arrays_paths"]}
        # the chain: inference <- training .anc <- the Lightning file's anemoi uuid
        rec = inf.lineage.records[0]
        assert [(p.uuid, p.content_id) for p in rec.parents] == [(tr.uuid, tr.content_id)]
        assert [r.uuid for r in inf.lineage.records] == [inf.uuid, tr.uuid]
        assert rec.parameters["to"] == "inference" and rec.parameters["source_sha256"] is None
        assert rec.code_versions["anemoi.models"] == "0.19.0" and rec.config_digest.startswith("sha256:")
        assert inf.verify().ok
    from anemoi.utils.checkpoints import load_metadata

    md, arrays = load_metadata(str(tmp_path / "inference.anc"), supporting_arrays=True)
    assert md["version"] == "2.0" and arrays["data"]["latitudes"].shape == (200,)


def test_legacy_training_file_straight_to_inference(tmp_path: Path) -> None:
    out = run_cli("convert", str(GNN), "--to", "inference", "--out-dir", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    (rep,) = json.loads(out.stdout)
    assert rep["output"].endswith("inference-last.anc") and rep["kind"] == "inference"
    assert set(rep["tensors"]) == {"weights", "graph"} and rep["documents"] == []
    expected = json.loads((GNN.parent / "expected.json").read_text())["training"]["state_dict"]
    with anemoi_ckpt.open(tmp_path / "inference-last.anc") as ck:
        assert len(ck.tensors("weights")) == sum(1 for n in expected if n.startswith("model."))


def test_a_corrupted_copy_is_caught(training_anc: Path, tmp_path: Path) -> None:
    """Copied sections are proven as they are copied, not re-read: a source whose bytes no longer
    match its recorded digests (one byte flipped inside a tensor, nothing else touched) is refused
    before the commit, and nothing is left behind."""
    bad = tmp_path / "src" / "bad.anc"
    bad.parent.mkdir()
    shutil.copy(training_anc, bad)
    with anemoi_ckpt.open(bad) as ck:
        m = ck.tensors("weights")
        name = max(m.entries, key=lambda n: m.entries[n].nbytes)
        offset = m._offsets[name] + m.entries[name].nbytes // 2
    with open(bad, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x5A]))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(anemoi_ckpt.IntegrityError,
                       match=rf"1 tensor\(s\) do not match the source's digest \({re.escape(name)}\)"):
        convert(bad, out / "inference.anc", to="inference")
    assert list(out.iterdir()) == []  # neither the output nor a temporary file
    # the intact source still converts: the check is the digest, not the copy path
    assert convert(training_anc, out / "inference.anc", to="inference").copied == ["weights", "graph"]


@pytest.mark.parametrize("durable", [True, False])
def test_proven_copy_through_the_url_path(training_anc: Path, tmp_path: Path, durable: bool) -> None:
    """A URL source's section passes through this process (``read_bytes``) and is proven the same
    way; durable or not (write-back started per chunk, or not)."""
    from anemoi_ckpt.reader import open_checkpoint
    from anemoi_ckpt.writer import Writer

    with open_checkpoint(training_anc) as ck:
        ck.remote = object()  # as for a URL: copy_section reads through read_bytes (the map here)
        try:
            with Writer(tmp_path / "c.anc", kind="inference", durable=durable) as w:
                w.copy_section("weights", ck, prove=True)
        finally:
            ck.remote = None
    with anemoi_ckpt.open(tmp_path / "c.anc") as out, anemoi_ckpt.open(training_anc) as tr:
        assert out.verify().ok and out.content_id == tr.content_id


@pytest.mark.parametrize("workers", [1, 2])
def test_copy_hashed_digests_are_of_the_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               workers: int) -> None:
    """Regions spanning chunk boundaries, empty regions, bytes outside every region; the copy
    lands at an offset of the output, and the digests are of what the output file holds."""
    import os

    from anemoi_ckpt.container import hashcopy

    monkeypatch.setattr(hashcopy, "_CHUNK", 4096 + 7)
    data = bytes(range(256)) * 100
    (tmp_path / "src").write_bytes(b"xyz" + data)
    regions = [(0, 5), (5, 5), (5, 4200), (4201, 4202), (5000, 25000), (25600, 25600)]
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "out", "w+b") as out:
        out.write(b"head")
        out.flush()
        told: list[tuple[int, int]] = []
        got = hashcopy.copy_hashed(hashcopy.kernel_copy(src.fileno(), 3, out.fileno(), 4),
                                   out.fileno(), 4, len(data), regions, workers,
                                   lambda pos, n: told.append((pos, n)))
    assert [pos for pos, _ in told] == list(range(0, len(data), 4096 + 7))  # every chunk, in order
    assert sum(n for _, n in told) == len(data)
    assert (tmp_path / "out").read_bytes() == b"head" + data
    assert got == [hashlib.sha256(data[a:b]).hexdigest() for a, b in regions]
    assert os.path.getsize(tmp_path / "out") == 4 + len(data)


def test_dtype_with_fp32_exceptions(training_anc: Path, tmp_path: Path) -> None:
    convert(training_anc, tmp_path / "bf16.anc", to="inference", dtype="bf16",
            keep_dtype=["*layer_norm*", "*trainable*"])
    with anemoi_ckpt.open(training_anc) as tr, anemoi_ckpt.open(tmp_path / "bf16.anc") as ck:
        src, out = tr.tensors("weights"), ck.tensors("weights")
        for name, t in out.items():
            if not src[name].is_floating_point():
                assert t.dtype == src[name].dtype and torch.equal(t, src[name])  # ints untouched
            elif "layer_norm" in name or "trainable" in name:
                assert t.dtype == torch.float32 and torch.equal(t, src[name])
            else:
                assert t.dtype == torch.bfloat16 and torch.equal(t, src[name].to(torch.bfloat16))
        assert all(t.dtype == tr.tensors("graph")[n].dtype for n, t in ck.tensors("graph").items())


def test_refusals_write_nothing(training_anc: Path, tmp_path: Path) -> None:
    cases = [
        (["--to", "inference", "--weights", "ema"], "no weight-averaged (EMA/SWA) copy"),
        (["--to", "inference", "--dtype", "bf16", "--cast", "*_input_idx"], "cannot be cast to bf16"),
        (["--to", "inference", "--cast", "*weight"], "--cast needs --dtype"),
    ]
    for args, message in cases:
        out = run_cli("convert", str(training_anc), str(tmp_path / "x.anc"), *args)
        assert out.returncode == 1 and message in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
        assert not (tmp_path / "x.anc").exists()
    out = run_cli("convert", str(training_anc), str(training_anc), "--to", "inference")
    assert out.returncode == 1 and "the output is the input file" in out.stderr
    with anemoi_ckpt.open(training_anc) as ck:  # untouched
        assert ck.kind == "training" and ck.verify().ok


def test_source_without_weights(tmp_path: Path) -> None:
    anemoi_ckpt.save(tmp_path / "empty.anc", {})
    with pytest.raises(anemoi_ckpt.FormatError, match="no model weights"):
        convert(tmp_path / "empty.anc", tmp_path / "o.anc", to="inference")
    assert not (tmp_path / "o.anc").exists()


@pytest.fixture(scope="module")
def ema_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A real Lightning run with EMA weight averaging, checkpointed during fit."""
    folder = tmp_path_factory.mktemp("ema")
    torch.manual_seed(0)
    module = Forecaster({"training": {"submodules_to_freeze": []}}, {"mean": np.zeros(C, np.float32)})
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, C)), batch_size=4)
    ckpt_cb = ModelCheckpoint(dirpath=folder, every_n_train_steps=4, save_last=False, filename="ema")
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[EMAWeightAveraging(decay=0.5), ckpt_cb])
    trainer.fit(module, data)
    path = folder / "ema.ckpt"
    ref = torch.load(path, weights_only=False)
    assert "current_model_state" in ref  # the callback really stored both copies
    return path, ref


def test_ema_weights_picked_and_reported(ema_ckpt: tuple[Path, dict], tmp_path: Path) -> None:
    path, ref = ema_ckpt
    ema = {k.removeprefix("model."): v for k, v in ref["state_dict"].items() if k.startswith("model.")}
    raw = {k.removeprefix("model."): v for k, v in ref["current_model_state"].items() if k.startswith("model.")}
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    # the training .anc keeps both; weights is the live model the optimizer state belongs to
    convert(path, tmp_path / "train.anc", keep_layout=True)
    with anemoi_ckpt.open(tmp_path / "train.anc") as ck:
        assert all(torch.equal(ck.tensors("weights")[k], v) for k, v in raw.items())
        assert all(torch.equal(ck.tensors("weights-ema")[k], v) for k, v in ema.items())
    for weights, want, expected in (("auto", "ema", ema), ("ema", "ema", ema), ("raw", "raw", raw)):
        report = convert(tmp_path / "train.anc", tmp_path / f"{weights}.anc", to="inference", weights=weights)
        assert report.weights == want
        with anemoi_ckpt.open(tmp_path / f"{weights}.anc") as ck:
            assert set(ck.tensors("weights")) == set(expected)
            assert all(torch.equal(ck.tensors("weights")[k], v) for k, v in expected.items())
            assert ck.lineage.records[0].parameters["weights"] == want
    out = run_cli("convert", str(path), str(tmp_path / "cli.anc"), "--to", "inference", "--keep-layout")
    assert out.returncode == 0 and "weights: ema" in out.stdout


def test_public_api_convert_is_callable(training_anc: Path, tmp_path: Path) -> None:
    report = anemoi_ckpt.convert(training_anc, tmp_path / "api.anc", to="inference")
    assert isinstance(report, anemoi_ckpt.convert.ConvertReport) and report.kind == "inference"
    with anemoi_ckpt.open(tmp_path / "api.anc") as ck:
        assert ck.kind == "inference"


def test_out_dir_refuses_colliding_names(tmp_path: Path) -> None:
    gt = FIXTURES / "legacy" / "anemoi" / "graphtransformer" / "last.ckpt"
    out = run_cli("convert", str(GNN), str(gt), "--out-dir", str(tmp_path / "o"))
    assert out.returncode == 2 and "would both be written to" in out.stderr
    assert not (tmp_path / "o").exists()
    out = run_cli("convert", str(GNN), "--out-dir", str(tmp_path / "dry"), "--dry-run")
    assert out.returncode == 0 and not (tmp_path / "dry").exists()
