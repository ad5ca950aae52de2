"""``inspect`` reports how a file is stored (compression) and what its signature claims, without a
trust decision and without importing model-signing; ``Verified.digest`` names the bundle checked.
Real files: the frozen signed and compressed golden files, and files converted by the real CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from anemoi_ckpt.signing import SIGNATURE_PATH
from tests.conftest import FIXTURES, run_cli

FROZEN = FIXTURES / "format-1.2"
SIGNED = FROZEN / "signed"
EXPECTED = json.loads((SIGNED / "expected.json").read_text())
KEY = str(SIGNED / "signing-key.pub")


def inspect(path: Path) -> tuple[str, dict]:
    text, js = run_cli("inspect", str(path)), run_cli("inspect", str(path), "--json")
    assert text.returncode == 0 and js.returncode == 0, (text.stderr, js.stderr)
    return text.stdout, json.loads(js.stdout)


def line(text: str, field: str) -> str:
    (found,) = [ln for ln in text.splitlines() if ln.startswith(f"  {field:<16}")]
    return found[18:]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_inspect_embedded_signature_is_reported_not_checked() -> None:
    text, info = inspect(SIGNED / "minimal-signed.anc")
    signer = EXPECTED["minimal-signed.anc"]["signer"]
    assert line(text, "signature") == \
        f"embedded, key {signer} (not checked: anemoi-ckpt verify --signature)"
    with zipfile.ZipFile(SIGNED / "minimal-signed.anc") as zf:
        (member,) = [n for n in zf.namelist() if n.endswith("/" + SIGNATURE_PATH)]
        bundle = zf.read(member)
    sig = info["signature"]
    assert (sig["form"], sig["method"], sig["signer"], sig["checked"]) == ("embedded", "key", signer, False)
    assert sig["digest"] == sha256(bundle)
    # what verify --signature then checks is that very bundle, by that very signer
    out = run_cli("verify", str(SIGNED / "minimal-signed.anc"), "--signature", "--public-key", KEY, "--json")
    assert out.returncode == 0, out.stderr
    verified = json.loads(out.stdout)["signature"]
    assert (verified["digest"], verified["signer"]) == (sig["digest"], signer)


def test_inspect_detached_signature_beside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "minimal.anc"
    shutil.copyfile(FROZEN / "minimal.anc", path)
    shutil.copyfile(SIGNED / "minimal.anc.sig", tmp_path / "minimal.anc.sig")
    text, info = inspect(path)
    signer = EXPECTED["minimal.anc.sig"]["signer"]
    assert line(text, "signature") == \
        f"detached {path}.sig, key {signer} (not checked: anemoi-ckpt verify --signature)"
    assert info["signature"]["digest"] == EXPECTED["minimal.anc.sig"]["sha256"]
    out = run_cli("verify", str(path), "--signature", "--public-key", KEY, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["signature"]["digest"] == EXPECTED["minimal.anc.sig"]["sha256"]


def test_inspect_unsigned_and_damaged_signature(tmp_path: Path) -> None:
    text, info = inspect(FROZEN / "minimal.anc")
    assert line(text, "signature") == "none" and info["signature"] is None
    # A damaged signature is reported, and the rest of the file still shown (exit 0).
    path = tmp_path / "minimal.anc"
    shutil.copyfile(FROZEN / "minimal.anc", path)
    (tmp_path / "minimal.anc.sig").write_bytes(b"\x00not a bundle")
    text, info = inspect(path)
    assert line(text, "signature").startswith(f"DAMAGED: {path}.sig: not a Sigstore bundle")
    assert info["signature"]["checked"] is False and "not a Sigstore bundle" in info["signature"]["damaged"]
    assert line(text, "content id") == EXPECTED["minimal-signed.anc"]["content_id"]


def test_inspect_storage_uncompressed_and_zstd(tmp_path: Path) -> None:
    text, info = inspect(FROZEN / "minimal.anc")
    assert line(text, "storage") == "uncompressed (memory-mappable)"
    assert info["storage"]["encoding"] == "none" and info["storage"]["compressed"] == {}
    assert info["storage"]["stored"] == info["storage"]["logical"] == sum(s["size"] for s in info["sections"])

    text, info = inspect(FROZEN / "training-zstd.anc")  # two compressed sections, several frames
    st = info["storage"]
    assert set(st["compressed"]) == {"weights", "optimizer"} and st["encoding"] == "zstd:3"
    assert line(text, "storage").startswith("zstd:3 (weights, optimizer): members ")
    assert st["stored"] == sum(s["size"] for s in info["sections"]) < st["logical"]

    out = tmp_path / "packed.anc"
    done = run_cli("convert", str(FROZEN / "all-dtypes.anc"), str(out), "--compress", "zstd:7")
    assert done.returncode == 0, done.stderr
    _, original = inspect(FROZEN / "all-dtypes.anc")
    _, packed = inspect(out)
    weights = packed["storage"]["compressed"]["weights"]
    assert (packed["storage"]["encoding"], weights["codec"], weights["level"]) == ("zstd:7", "zstd", 7)
    # the logical size is the uncompressed member's: what --compress none gives back
    (plain,) = [s["size"] for s in original["sections"] if s["path"] == "weights.safetensors"]
    assert weights["logical"] == plain


def test_inspect_of_a_signed_compressed_file_imports_neither_model_signing_nor_torch(tmp_path: Path) -> None:
    out = tmp_path / "packed.anc"
    assert run_cli("convert", str(FROZEN / "minimal.anc"), str(out), "--compress", "zstd").returncode == 0
    shutil.copyfile(SIGNED / "minimal.anc.sig", str(out) + ".sig")  # another file's: still only read
    code = f"""
import sys, anemoi_ckpt
from anemoi_ckpt.summary import summarize
with anemoi_ckpt.open({str(out)!r}) as ck:
    info = summarize(ck)
assert info["signature"]["form"] == "detached" and info["storage"]["encoding"].startswith("zstd")
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}})))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split())
    assert not loaded & {"model_signing", "sigstore", "torch"}, loaded & {"model_signing", "sigstore", "torch"}
