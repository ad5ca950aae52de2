"""merge, split and adapters with inputs at URLs (a loopback HTTP range server): the same
outputs, content id and lineage, as from the local files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("peft")

import anemoi_ckpt  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.servers import RangeServer  # noqa: E402
from tests.test_merge import cli_files  # noqa: E402,F401 - a fixture: a base and a LoRA adapter


def test_merge_split_and_adapters_take_urls(cli_files, tmp_path: Path) -> None:
    """The adapter commands read their inputs from URLs and write what they write from paths."""
    d, base, adapter = cli_files["dir"], cli_files["base"], cli_files["adapter"]
    out = tmp_path / "outputs"
    out.mkdir()
    with RangeServer(d) as srv:
        remote_base, remote_adapter = srv.url(base.name), srv.url(adapter.name)
        r = run_cli("merge", remote_base, remote_adapter, "-o", str(out / "merged-remote.anc"))
        assert r.returncode == 0, r.stderr
        assert run_cli("merge", str(base), str(adapter), "-o", str(out / "merged-local.anc")).returncode == 0
        listed = run_cli("adapters", "list", remote_adapter, "--json")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout == run_cli("adapters", "list", str(adapter), "--json").stdout.replace(
            str(adapter), remote_adapter)
        r = run_cli("adapters", "attach", remote_base, remote_adapter, "-o", str(out / "attached-remote.anc"))
        assert r.returncode == 0, r.stderr
        r = run_cli("adapters", "export", remote_adapter, str(out / "peft-remote"))
        assert r.returncode == 0, r.stderr
        shutil.copy(out / "merged-local.anc", d / "merged.anc")
        r = run_cli("split", srv.url("merged.anc"), "--base", remote_base, "--rank", "2", "--exact-svd",
                    "-o", str(out / "split-remote.anc"))
        assert r.returncode == 0, r.stderr
    r = run_cli("split", str(d / "merged.anc"), "--base", str(base), "--rank", "2", "--exact-svd",
                "-o", str(out / "split-local.anc"))
    assert r.returncode == 0, r.stderr
    assert run_cli("adapters", "attach", str(base), str(adapter), "-o", str(out / "attached-local.anc")).returncode == 0
    assert run_cli("adapters", "export", str(adapter), str(out / "peft-local")).returncode == 0
    for f in (out / "peft-local").iterdir():
        assert (out / "peft-remote" / f.name).read_bytes() == f.read_bytes(), f.name
    for a, b in (("merged-remote", "merged-local"), ("split-remote", "split-local"),
                 ("attached-remote", "attached-local")):
        with anemoi_ckpt.open(out / f"{a}.anc") as x, anemoi_ckpt.open(out / f"{b}.anc") as y:
            assert x.content_id == y.content_id, a
            assert [p.uuid for p in x.lineage.records[0].parents] == [p.uuid for p in y.lineage.records[0].parents]
