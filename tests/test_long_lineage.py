"""Long lineage blocks (issue 16): a chain of 3,000 or 100,000 records, or a wide and deep graph
of them, is drawn by ``inspect`` and ``lineage`` without ``RecursionError``, and the text drawn
grows linearly with the records (the tree stops indenting past ``MAX_INDENT`` levels).

The files are real ``.anc`` files whose lineage.json is rewritten with every digest kept
consistent (``Archive``), so the reader sees a well-formed block of that length.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anemoi_ckpt
from anemoi_ckpt.container.schema import Lineage
from anemoi_ckpt.lineage.verify import ancestors
from anemoi_ckpt.lineage.view import MAX_INDENT, RENDERERS, check_lineage
from anemoi_ckpt.summary import render, summarize
from tests.conftest import run_cli
from tests.test_damaged import Archive


def _record(uid: str, parents: list[str]) -> dict:
    return {"uuid": uid, "kind": "training", "content_id": "sha256:" + "ab" * 32,
            "operation": "fine-tune", "parameters": {"steps": 1}, "created": "2026-01-01T00:00:00Z",
            "tool": {"name": "anemoi-ckpt", "version": "0"},
            "parents": [{"uuid": p, "content_id": "sha256:" + "ab" * 32, "role": "base"}
                        for p in parents]}


def long_file(tmp_path: Path, n: int, width: int = 1, name: str = "long.anc") -> Path:
    """A file whose lineage has ``n`` ancestor records: record k has as parents records
    k+1 .. k+width (a chain for width 1; a graph of longest chain n for more)."""
    src = tmp_path / f"src-{name}"
    anemoi_ckpt.save(src, {"w": torch.zeros(2)})
    arc = Archive(src)
    block = json.loads(arc["lineage.json"])
    own = block["records"][0]
    uids = [str(uuidlib.UUID(int=k + 1)) for k in range(n)]
    own["parents"] = [{"uuid": uids[0], "content_id": None, "role": "base"}]
    block["records"] = [own] + [_record(u, uids[k + 1:k + 1 + width]) for k, u in enumerate(uids)]
    arc["lineage.json"] = json.dumps(block, separators=(",", ":")).encode()
    return arc.write(tmp_path / name)


def _draw_all(path: Path, n: int) -> None:
    with anemoi_ckpt.open(path) as ck:
        block = ck.lineage
        check_lineage(block, path, ck.uuid)
        info = summarize(ck)
        assert info["lineage"]["records"] == n + 1
        assert info["lineage"]["depth"] == n + 0  # own -> uids[0] -> ... -> uids[n-1]: n links
        assert render(info)
    for fmt, draw in RENDERERS.items():
        text = draw(block)
        # Linear in the records: at most a few hundred characters per record, whatever the depth.
        assert len(text) < 2000 * (n + 1), (fmt, len(text))
    tree = RENDERERS["tree"](block)
    assert len(tree.splitlines()) == n + 2  # every record once, plus the note where indent stops
    assert f"deeper than {MAX_INDENT} levels" in tree
    assert len(ancestors(block)) == n


@pytest.mark.parametrize("n", [3_000, 100_000])
def test_long_chain_python_api(tmp_path: Path, n: int) -> None:
    _draw_all(long_file(tmp_path, n), n)


def test_long_chain_cli(tmp_path: Path) -> None:
    path = long_file(tmp_path, 3_000)
    for args in (["inspect", str(path)], ["inspect", "--json", str(path)],
                 *(["lineage", str(path), "--format", f] for f in RENDERERS)):
        out = run_cli(*args)
        assert out.returncode == 0, (args, out.stderr[-2000:])
        assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr
        assert len(out.stdout) < 2000 * 3_001, (args, len(out.stdout))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2_500), width=st.integers(1, 4))
def test_wide_and_deep_graph(tmp_path: Path, n: int, width: int) -> None:
    """Records with several parents each: every record drawn in full once, the longest chain
    found without recursion, and the text still linear in records and links."""
    path = long_file(tmp_path, n, width, name=f"g-{n}-{width}.anc")
    with anemoi_ckpt.open(path) as ck:
        block = ck.lineage
        check_lineage(block, path, ck.uuid)
        assert block.depth() == n
        assert summarize(ck)["lineage"]["depth"] == n
    for draw in RENDERERS.values():
        assert len(draw(block)) < 2000 * (n + 1) * width
    tree = RENDERERS["tree"](block)
    assert tree.count("(see above)") == sum(len(r.parents) for r in block.records) - n


def test_depth_ignores_a_cycle_and_unknown_parents() -> None:
    """Lineage.depth() on an unchecked block (inspect does not refuse cycles) ends."""
    a, b, c = (str(uuidlib.UUID(int=k)) for k in (1, 2, 3))
    block = Lineage.model_validate({"records": [_record(a, [b, "no-record"]), _record(b, [c]),
                                                _record(c, [a, b])]})
    assert block.depth() == 3
