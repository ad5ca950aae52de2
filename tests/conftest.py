"""Shared test helpers: small real ``.anc`` files written with the public API."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import anemoi_ckpt
from anemoi_ckpt.demo.data import demo_anemoi_metadata, demo_graph, demo_state_dict

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


def require_module(name: str, reason: str):
    """``pytest.importorskip``, except in the anemoi integration job (``make test-anemoi`` sets
    ``ANEMOI_CKPT_REQUIRE_ANEMOI=1``): there a missing package is an error, so a broken install
    cannot turn the integration tests into silent skips."""
    if os.environ.get("ANEMOI_CKPT_REQUIRE_ANEMOI") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=reason)


@pytest.fixture
def demo_sd() -> dict[str, torch.Tensor]:
    return demo_state_dict(channels=16, layers=1, grid_points=64)


@pytest.fixture
def demo_file(tmp_path: Path, demo_sd: dict[str, torch.Tensor]) -> Path:
    """A complete file: weights with aliases, a graph section, anemoi metadata, supporting arrays."""
    md, arrays = demo_anemoi_metadata()
    path = tmp_path / "demo.anc"
    anemoi_ckpt.save(path, demo_sd, anemoi_metadata=md, supporting_arrays=arrays,
                     sections={"graph": demo_graph(grid_points=64, hidden=16)},
                     metadata={"description": "test file"})
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a subprocess (exit codes and stderr as users see them)."""
    return subprocess.run([sys.executable, "-m", "anemoi_ckpt", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "default"},
                          timeout=120)


def one_error_line(out: subprocess.CompletedProcess[str], *fragments: str, rc: int = 1) -> str:
    """The single ``anemoi-ckpt: error:`` line of a failed command (no traceback), holding each
    fragment; returns it."""
    assert out.returncode == rc, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anemoi-ckpt: error: "), out.stderr
    assert "Traceback" not in out.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def section_span(path: Path, rel: str) -> tuple[int, int]:
    """(data offset, size) of a member, from the reader's own zip parsing."""
    with anemoi_ckpt.open(path) as ck:
        m = ck._members[rel]
        return m.data_offset, m.size


def arrays_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(arrays_equal(a[k], b[k]) if isinstance(a[k], dict) else np.array_equal(a[k], b[k])
               for k in a)


#: the smallest reference model the trainer tests fine-tune (seconds per run on a CPU)
TINY_REFERENCE = {"size": "tiny", "channels": 8, "layers": 2, "heads": 2, "n_lat": 4, "n_lon": 8, "n_vars": 3}


def tiny_reference_base(path: Path, seed: int = 0) -> Path:
    """A fine-tunable base: the tiny reference model, seeded, saved with its builder spec."""
    from anemoi_ckpt.builders import build_model, model_spec

    torch.manual_seed(seed)
    model = build_model({"builder": "reference", "config": TINY_REFERENCE})
    return anemoi_ckpt.save(path, model.state_dict(), metadata={"model": model_spec(model)})
