"""What importing and reading pull in: never Lightning or PEFT; not even torch for inspect/verify."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import FIXTURES


def modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_never_imports_lightning_or_peft() -> None:
    mods = modules_after(f"""
import torch, anemoi_ckpt
from anemoi_ckpt.summary import summarize
import tempfile, os
anemoi_ckpt.save(os.path.join(tempfile.mkdtemp(), 'imp.anc'), {{'a': torch.ones(2)}})
with anemoi_ckpt.open({str(FIXTURES / 'format-1.0' / 'anemoi.anc')!r}) as ck:
    ck.state_dict(); ck.verify(); summarize(ck)
""")
    assert not {m for m in mods if m.split(".")[0] in ("lightning", "pytorch_lightning", "peft")}


def test_inspect_and_verify_do_not_import_torch() -> None:
    mods = modules_after(f"""
import anemoi_ckpt
from anemoi_ckpt.summary import summarize
with anemoi_ckpt.open({str(FIXTURES / 'format-1.0' / 'anemoi.anc')!r}) as ck:
    summarize(ck); assert ck.verify().ok
""")
    assert "torch" not in mods
