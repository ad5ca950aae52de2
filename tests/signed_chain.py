"""Files for the signature tests of merge, lineage and the catalogue: a small real base, LoRA
adapters made for it (``merge`` folds them in), signed with the real ``model_signing`` CLI
(detached) or with :mod:`anemoi_ckpt.signing` (embedded, by key or by certificate). Key material
comes from :mod:`tests.signing_pki`."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import torch

import anemoi_ckpt
from anemoi_ckpt.signing import SIGNATURE_PATH, sign
from tests.signing_pki import MODEL_SIGNING, Keys, Pki


def make_base(path: Path, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    anemoi_ckpt.save(path, {"layer.weight": torch.randn(8, 4, generator=g), "layer.bias": torch.zeros(8)})
    return path


def make_adapter(path: Path, base: Path, name: str = "lora", seed: int = 1) -> Path:
    """A kind-adapter file with one LoRA module on ``layer``, made for ``base`` (its content id
    recorded as the adapter's base, which the adapter's signature then covers)."""
    g = torch.Generator().manual_seed(seed)
    with anemoi_ckpt.open(base) as bk:
        cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["layer"]}
        info = {"name": name, "base_content_id": bk.content_id, "base_uuid": bk.uuid}
        with anemoi_ckpt.Writer(path, kind="adapter", metadata={"peft_config": cfg, "adapter": info},
                                parents=[bk]) as w:
            w.add_section("weights", {"base_model.model.layer.lora_A.weight": torch.randn(2, 4, generator=g),
                                      "base_model.model.layer.lora_B.weight": torch.randn(8, 2, generator=g)})
    return path


def sign_with_cli(path: Path, key: Keys) -> Path:
    """Detached ``PATH.sig`` made by the real model_signing CLI, as a publisher would."""
    sig = Path(f"{path}.sig")
    subprocess.run([MODEL_SIGNING, "sign", "key", str(path), "--signature", str(sig),
                    "--private_key", str(key.private)], check=True, capture_output=True, timeout=120)
    return sig


def embed_key(path: Path, key: Keys) -> Path:
    sign(path, private_key=key.private, embed=True, inplace=True)
    return path


def embed_certificate(path: Path, pki: Pki) -> Path:
    sign(path, private_key=pki.signer.private, certificate=pki.leaf, certificate_chain=[pki.intermediate],
         embed=True, inplace=True)
    return path


def bundle_digest(path: Path) -> str:
    """sha256 of the signature bundle that applies to ``path``: ``PATH.sig`` if present, else the
    embedded member (read with zipfile, independently of our reader)."""
    sig = Path(f"{path}.sig")
    if sig.exists():
        data = sig.read_bytes()
    else:
        with zipfile.ZipFile(path) as z:
            (name,) = [n for n in z.namelist() if n.endswith("/" + SIGNATURE_PATH)]
            data = z.read(name)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def flip_tensor_byte(path: Path) -> None:
    """One bit of the first tensor of ``weights`` flipped in place (digests left as they were)."""
    with anemoi_ckpt.open(path) as ck:
        m = ck.tensors()
        offset = min(m._offsets.values())
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
