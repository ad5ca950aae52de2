"""Each translation step proven against reality: a genuine file of one anemoi release, translated by
the shipped steps up to the anemoi-models version of the next release we hold a file of, has exactly
that next file's tensor names and shapes (weights and buffers of the inference files).

The files are the genuine ones under ``fixtures/legacy/anemoi/<release>/<model>/``, written by each
release's own code (see ``make_release.sh``). Names only: no anemoi package is needed, so this runs
in ``make test``; ``tests/test_anemoi_releases.py`` proves the values with the newest anemoi-models.
A pair whose gap no step covers yet is listed in ``compatibility.toml`` under ``chain_gaps`` and
expected to fail (strictly: closing the gap makes the test say so).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from anemoi_ckpt.anemoi.layout import steps_up_to
from anemoi_ckpt.convert.sources import detect
from anemoi_ckpt.translate import TranslationInput, translate
from anemoi_ckpt.translate.ops import load_consumed, load_supplied
from anemoi_ckpt.translate.steps import load_steps
from tests.conftest import FIXTURES

ROOT = FIXTURES / "legacy" / "anemoi"
COMPAT = tomllib.loads((ROOT / "compatibility.toml").read_text())


def _folders() -> dict[str, list[tuple[Version, str, Path]]]:
    """model -> [(anemoi-models version, release, folder)], oldest first."""
    out: dict[str, list[tuple[Version, str, Path]]] = {}
    for info in ROOT.glob("**/versions.json"):
        meta = json.loads(info.read_text())
        versions = meta["versions"]
        model = meta.get("model") or info.parent.name
        out.setdefault(model, []).append((Version(versions["anemoi-models"]),
                                          versions.get("anemoi-training", "?"), info.parent))
    return {m: sorted(v) for m, v in out.items()}


def _pairs() -> list:
    params = []
    for model, chain in sorted(_folders().items()):
        for (v_old, r_old, f_old), (v_new, r_new, f_new) in zip(chain, chain[1:]):
            gap = COMPAT.get("chain_gaps", {}).get(f"{r_old}/{model}")
            marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
            params.append(pytest.param(f_old, f_new, v_new, marks=marks,
                                       id=f"{model}-{r_old}-to-{r_new}"))
    return params


def layout(folder: Path, up_to: Version) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{section:name: (section, shape)}`` of the inference file after the steps up to ``up_to``."""
    source = detect(folder / "inference-last.ckpt")
    try:
        inp = TranslationInput(source.format, {s: [spec[0] for spec in specs]
                                               for s, specs in source.specs.items()},
                               source.anemoi_metadata, label=str(folder))
        result = translate(inp, steps=steps_up_to(up_to, load_steps()))
        out = {}
        for sec, specs in source.specs.items():
            for name, _code, shape, _n in specs:
                new_sec, new = result.renames[sec][name]
                out[f"{new_sec}:{new}"] = tuple(shape)
        return out
    finally:
        source.close()


#: tensors with one axis per graph edge: two releases' anemoi-graphs may build different edges from
#: the same graph config (e.g. 0.4.4 and 0.6.2: 256 and 248 encoder edges), which no layout step
#: explains or should; that axis is left out of the comparison, every other one must match
_PER_EDGE = re.compile(r"(edge_attr|edge_index_base|edge_inc|trainable\.trainable)$")


def _layout_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if not _PER_EDGE.search(name) or "node_attributes" in name or not shape:
        return shape
    return shape[:-1] if name.endswith("edge_index_base") else shape[1:]


@pytest.mark.parametrize(("old", "new", "new_version"), _pairs())
def test_translated_layout_equals_the_next_release(old: Path, new: Path, new_version: Version) -> None:
    mine, theirs = layout(old, new_version), layout(new, new_version)
    # tensors the newer code computes itself at load (a step's load_call) need not be in the file
    load_ops = [op for s in steps_up_to(new_version, load_steps(), load_ops=True) for op in s.load_ops]
    missing = sorted(n for n in theirs.keys() - mine.keys()
                     if not load_supplied(load_ops, n.partition(":")[2]))
    # ... and tensors a load op takes out of the file (e.g. a fused projection it splits)
    extra = sorted(n for n in mine.keys() - theirs.keys() if not load_consumed(load_ops, n.partition(":")[2]))
    assert not missing and not extra, (
        f"{len(missing)} names of the next release not produced (first: {missing[:4]}); "
        f"{len(extra)} produced that it does not have (first: {extra[:4]})")
    shapes = {n: (mine[n], theirs[n]) for n in mine
              if n in theirs and _layout_shape(n, mine[n]) != _layout_shape(n, theirs[n])}
    assert not shapes, f"shapes differ: {dict(list(shapes.items())[:4])}"
