"""Fork and resume by uuid: the trainer's ``base:`` and ``--resume`` take ``uuid:<uuid>``,
resolved through the catalogue to a copy on a loopback HTTP server, and the result is the same,
bit for bit, as from the local files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("peft")

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.errors import AncError  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.servers import RangeServer  # noqa: E402
from tests.test_trainer import _run, _save_base  # noqa: E402


def uuid_of(path: Path) -> str:
    with anemoi_ckpt.open(path) as ck:
        return ck.uuid


def test_fork_and_resume_by_uuid_from_a_remote_copy(tmp_path: Path) -> None:
    base = _save_base(tmp_path / "base.anc", 0)
    first = _run(base, tmp_path / "first", "lora", 2)
    reference = _run(base, tmp_path / "ref", "lora", 4, resume=first.training_file)
    # The "other system": copies served over HTTP, known to the catalogue only by URL.
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(base, site / "base.anc")
    shutil.copy(first.training_file, site / "run-train.anc")
    db = tmp_path / "cat.db"
    with RangeServer(site) as srv:
        out = run_cli("catalogue", "register", srv.url("base.anc"), srv.url("run-train.anc"),
                      "--catalogue", str(db))
        assert out.returncode == 0, out.stderr
        config = tmp_path / "ft.yaml"
        config.write_text(f"base: uuid:{uuid_of(base)}\nmethod: lora\nmax_steps: 4\nseed: 0\n"
                          "data: {n_samples: 12, batch_size: 4, val_samples: 4}\n"
                          "optimizer: {lr: 0.01, weight_decay: 0.01}\n"
                          "schedule: {name: cosine, warmup_steps: 1, total_steps: 10}\n"
                          "lora: {r: 4, alpha: 8, dropout: 0.1}\n"
                          f"output: {{dir: {tmp_path / 'fork'}, name: run}}\n")
        res = run_cli("finetune", str(config), "--resume", f"uuid:{uuid_of(first.training_file)[:13]}",
                      "--catalogue", str(db), "--register", "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    # --register: the outputs are in the catalogue, linked to the base and the resume file.
    assert [r["status"] for r in result["registered"]] == ["new", "new"]
    shown = json.loads(run_cli("catalogue", "show", uuid_of(Path(result["output"])), "--catalogue",
                               str(db), "--json").stdout)
    assert {p["uuid"] for p in shown["parents"]} == {uuid_of(base), uuid_of(first.training_file)}
    with anemoi_ckpt.open(result["output"]) as got, anemoi_ckpt.open(reference.output) as want:
        assert got.content_id == want.content_id  # the same run as from the local files
        parents = {p.uuid for p in got.lineage.records[0].parents}
    assert parents == {uuid_of(base), uuid_of(first.training_file)}


def test_unresolvable_uuid_is_one_line(tmp_path: Path) -> None:
    base = _save_base(tmp_path / "base.anc", 0)
    db = tmp_path / "cat.db"
    assert run_cli("catalogue", "register", str(base), "--catalogue", str(db)).returncode == 0
    moved = tmp_path / "elsewhere.anc"
    base.rename(moved)  # the only registered copy is gone
    config = tmp_path / "ft.yaml"
    config.write_text(f"base: uuid:{uuid_of(moved)}\nmethod: lora\nmax_steps: 1\n"
                      f"catalogue: {db}\noutput: {{dir: {tmp_path / 'out'}}}\n")
    res = run_cli("finetune", str(config))
    assert res.returncode == 1 and "no copy of" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1
    res = run_cli("finetune", str(config), "--set", "base=uuid:ffffffff-0000")
    assert res.returncode != 0 and "no checkpoint or lineage record" in res.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(AncError):
        from anemoi_ckpt.remote.fetch import resolve_ref

        resolve_ref(f"uuid:{uuid_of(moved)}", db)
