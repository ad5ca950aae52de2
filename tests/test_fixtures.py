"""Every golden file any format version ever wrote (fixtures/format-*/) stays readable, with the
same ids, tensors and metadata. These files are frozen: never regenerate them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

import anemoi_ckpt
from anemoi_ckpt.anemoi_meta import flat_arrays
from tests.conftest import FIXTURES, run_cli

CASES = [(d.name, name, info) for d in sorted(FIXTURES.glob("format-*"))
         for name, info in json.loads((d / "expected.json").read_text()).items()]


def digest(t: torch.Tensor) -> str:
    flat = t.contiguous().reshape(-1)
    return hashlib.sha256(bytes(flat.view(torch.uint8).numpy()) if flat.numel() else b"").hexdigest()


def test_current_format_has_frozen_fixtures() -> None:
    assert (FIXTURES / f"format-{anemoi_ckpt.FORMAT_VERSION}" / "expected.json").exists(), \
        "a new format version needs its golden files: run fixtures/make_fixtures.py and commit them"


@pytest.mark.parametrize("version,name,info", CASES, ids=[f"{v}/{n}" for v, n, _ in CASES])
def test_golden_file(version: str, name: str, info: dict) -> None:
    path = FIXTURES / version / name
    with anemoi_ckpt.open(path) as ck:
        assert (ck.uuid, ck.kind, ck.content_id, ck.format_version) == \
            (info["uuid"], info["kind"], info["content_id"], info["format_version"])
        report = ck.verify()
        assert report.ok, report.damaged
        assert ck.tensor_sections() == list(info["tensors"])
        for section, expected in info["tensors"].items():
            tensors = ck.tensors(section)
            assert set(tensors) == set(expected)
            assert tensors.aliases == info["aliases"][section]
            for tname, meta in expected.items():
                t = tensors[tname]
                assert str(t.dtype) == meta["dtype"] and list(t.shape) == meta["shape"], tname
                assert digest(t) == meta["sha256"], tname
        assert [r.uuid for r in ck.lineage.records] == info["lineage"]
        assert {n: ck.document(n) for n in ck.documents()} == info.get("documents", {})
        if "supporting_arrays" in info:
            assert ck.anemoi_metadata["version"] == info["anemoi_metadata_version"]
            flat = flat_arrays(ck.supporting_arrays)
            assert {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
                    for k, v in flat.items()} == info["supporting_arrays"]


@pytest.mark.parametrize("version,name,info", CASES, ids=[f"{v}/{n}" for v, n, _ in CASES])
def test_golden_tensor_members_open_with_safetensors(version: str, name: str, info: dict, tmp_path: Path) -> None:
    with zipfile.ZipFile(FIXTURES / version / name) as zf:
        zf.extractall(tmp_path)
    for section, expected in info["tensors"].items():
        (member,) = tmp_path.glob(f"*/{section}.safetensors*")
        if member.name.endswith(".safetensors-zstd"):  # compressed (1.2): refused, never misread
            with pytest.raises(safetensors.SafetensorError, match="not fully covered"):
                safetensors.safe_open(member, framework="pt")
            continue
        with safetensors.safe_open(member, framework="pt") as f:  # the Rust header parser
            stored = set(f.keys())
        assert stored == set(expected) - set(info["aliases"][section])
        # safetensors' torch binding lacks F8_E8M0; every other dtype loads there too.
        if not any("e8m0" in m["dtype"] for m in expected.values()):
            loaded = safetensors.torch.load_file(member)
            assert {k: digest(v) for k, v in loaded.items()} == \
                {k: expected[k]["sha256"] for k in stored}


def test_golden_anemoi_file_reads_with_anemoi_utils() -> None:
    checkpoints = pytest.importorskip("anemoi.utils.checkpoints")
    for d in FIXTURES.glob("format-*"):
        md, arrays = checkpoints.load_metadata(str(d / "anemoi.anc"), supporting_arrays=True)
        assert md["metadata_inference"]["dataset_names"] == ["data"]
        assert arrays["data"]["mask"].tolist() == [True, False, True]


# Signed golden files (fixtures/format-1.2/signed/, written once by fixtures/make_signed_fixture.py):
# signatures made over frozen bytes must verify forever, with our verifier and model-signing's.
SIGNED = FIXTURES / "format-1.2" / "signed"


def test_signed_golden_files_verify_with_anemoi_ckpt() -> None:
    expected = json.loads((SIGNED / "expected.json").read_text())
    key = SIGNED / expected["public_key"]
    for name, source, signature in (("minimal-signed.anc", SIGNED / "minimal-signed.anc", []),
                                    ("minimal.anc.sig", SIGNED.parent / "minimal.anc",
                                     [str(SIGNED / "minimal.anc.sig")])):
        info = expected[name]
        assert "sha256:" + hashlib.sha256((SIGNED / name).read_bytes()).hexdigest() == info["sha256"]
        assert "sha256:" + hashlib.sha256((SIGNED.parent / "minimal.anc").read_bytes()).hexdigest() \
            == info["source_sha256"]
        out = run_cli("verify", str(source), "--signature", *signature, "--public-key", str(key), "--json")
        assert out.returncode == 0, out.stderr
        sig = json.loads(out.stdout)["signature"]
        assert (sig["signer"], sig["method"], sig["detached"]) == \
            (info["signer"], "key", info["form"] == "detached")
    # The embedded copy holds the frozen file's members byte for byte, plus the signature.
    with zipfile.ZipFile(SIGNED / "minimal-signed.anc") as signed, \
            zipfile.ZipFile(SIGNED.parent / "minimal.anc") as frozen:
        assert {n: signed.read(n) for n in frozen.namelist()} == {n: frozen.read(n) for n in frozen.namelist()}
        assert sorted(set(signed.namelist()) - set(frozen.namelist())) == \
            [f"{frozen.namelist()[0].split('/')[0]}/signature.sig"]
    # A signature over frozen bytes checks those bytes: the same bundle fails on another file.
    out = run_cli("verify", str(SIGNED.parent / "minimal-zstd.anc"), "--signature",
                  str(SIGNED / "minimal.anc.sig"), "--public-key", str(key))
    assert out.returncode == 1 and "does not match its signature" in out.stderr


def test_signed_golden_files_verify_with_model_signing_cli(tmp_path: Path) -> None:
    from tests.signing_pki import MODEL_SIGNING

    def model_signing(target: Path, signature: Path) -> int:
        return subprocess.run([MODEL_SIGNING, "verify", "key", str(target), "--signature", str(signature),
                               "--public_key", str(SIGNED / "signing-key.pub")],
                              capture_output=True, text=True, timeout=120).returncode

    assert model_signing(SIGNED.parent / "minimal.anc", SIGNED / "minimal.anc.sig") == 0
    with zipfile.ZipFile(SIGNED / "minimal-signed.anc") as zf:  # extracted, as docs/signing.md says
        zf.extractall(tmp_path)
    (root,) = tmp_path.iterdir()
    assert model_signing(root, root / "signature.sig") == 0
    (root / "metadata.json").write_bytes(b"{}")  # and it does check the bytes
    assert model_signing(root, root / "signature.sig") != 0
