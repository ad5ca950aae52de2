"""Issue 17: an anemoi base given as a URL or ``uuid:`` fine-tunes as the local file does.

The base (a genuine anemoi-training 0.17.1 checkpoint converted to ``.anc``) is served by a loopback
HTTP server and known to a catalogue only by its URL; ``base: uuid:<uuid>`` resolves to it, the
installed anemoi-models builds the model from the remote file (no pickle), and the LoRA adapter the
run writes is the one a run from the local file writes (same content id), recording the same base.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, require_module, run_cli

require_module("anemoi.models", "needs anemoi-models (make test-anemoi)")
require_module("anemoi.datasets", "needs anemoi-datasets (make test-anemoi)")
pytest.importorskip("lightning")
pytest.importorskip("peft")

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.trainer.config import load_config  # noqa: E402
from anemoi_ckpt.trainer.run import train  # noqa: E402
from tests.anemoi_datasets import session_zarr  # noqa: E402
from tests.servers import RangeServer  # noqa: E402

FIXTURE = REPO / "fixtures" / "legacy" / "anemoi" / "graphtransformer" / "inference-last.ckpt"


def _run(base: str, zarr: Path, out: Path, catalogue: Path | None = None) -> Any:
    cfg = load_config(None, data={
        "base": base, "method": "lora", "max_steps": 2, "seed": 3,
        **({"catalogue": str(catalogue)} if catalogue else {}),
        "data": {"dataset": str(zarr), "start": "2020-02-01", "end": "2020-02-05",
                 "validation": {"start": "2020-02-15", "end": "2020-02-16"}, "batch_size": 2},
        "output": {"dir": str(out), "name": "run"}})
    return train(cfg, accelerator="cpu", durable=False)


def test_uuid_base_on_a_remote_copy_fine_tunes_as_the_local_file(tmp_path: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    zarr = session_zarr(tmp_path_factory, dynamics="finetune")
    site = tmp_path / "site"
    site.mkdir()
    cli = Path(sys.executable).parent / "anemoi-ckpt"
    subprocess.run([str(cli), "convert", str(FIXTURE), str(site / "base.anc")], check=True,
                   capture_output=True, timeout=300)
    local = tmp_path / "local.anc"
    shutil.copy(site / "base.anc", local)
    with anemoi_ckpt.open(local) as ck:
        uuid, content_id = ck.uuid, ck.content_id
    want = _run(str(local), zarr, tmp_path / "a")
    db = tmp_path / "cat.db"
    with RangeServer(site) as srv:
        out = run_cli("catalogue", "register", srv.url("base.anc"), "--catalogue", str(db))
        assert out.returncode == 0, out.stderr
        local.unlink()  # only the remote copy exists now
        got = _run(f"uuid:{uuid}", zarr, tmp_path / "b", catalogue=db)
    assert got.val_loss_before == want.val_loss_before and got.val_loss == want.val_loss
    with anemoi_ckpt.open(got.output) as g, anemoi_ckpt.open(want.output) as w:
        assert g.kind == "adapter" and g.content_id == w.content_id
        assert g.metadata.model_extra["adapter"]["base_content_id"] == content_id
        assert g.metadata.model_extra["adapter"]["base_uuid"] == uuid
        assert [p.uuid for p in g.lineage.records[0].parents] == [uuid]
