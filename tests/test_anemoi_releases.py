"""Issue 14: checkpoints written by older anemoi-training releases convert and run in today's anemoi.

The fixtures (``fixtures/legacy/anemoi/<release>/<model>/``) are genuine: each release's own
``anemoi-training train`` wrote ``last.ckpt`` and ``inference-last.ckpt``, and its own environment
recorded ``predict_step`` of the unpickled inference model on a fixed input (``reference.npz``,
``versions.json``; see ``fixtures/legacy/anemoi/make_release.sh``). Here, with the newest
anemoi-models installed and no old code: ``convert`` each file, ``load_model`` the result, call
``predict_step`` on the recorded input and compare with the recorded output, exactly unless
``fixtures/legacy/anemoi/compatibility.toml`` states a tolerance and its reason for that release.

Every outcome also lands in a matrix; the last test renders it and checks that
``docs/compatibility.md`` shows it (``ANEMOI_CKPT_WRITE_MATRIX=1`` rewrites the page).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import warnings
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REPO, require_module

require_module("anemoi.models", reason="needs anemoi-models (anemoi-ckpt[anemoi]; make test-anemoi)")
require_module("torch_geometric", reason="needs torch-geometric (make test-anemoi)")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from anemoi_ckpt.anemoi import load_model  # noqa: E402
from anemoi_ckpt.convert import convert  # noqa: E402
# the tiny anemoi-datasets dataset and the anemoi-inference subprocess, as in the 0.17.1 tests
from tests.test_anemoi_inference import LEAD_HOURS, _forecast, _read, _run, dataset  # noqa: E402,F401

ROOT = FIXTURES / "legacy" / "anemoi"
COMPAT = tomllib.loads((ROOT / "compatibility.toml").read_text())
DOC = REPO / "docs" / "compatibility.md"
SOURCES = {"training": "last.ckpt", "inference": "inference-last.ckpt"}


def _key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def _cases() -> list[tuple[str, str, Path]]:
    """(release, model, folder) for every folder with a recorded reference, oldest release first."""
    out = []
    for info in sorted(ROOT.glob("**/versions.json")):
        meta = json.loads(info.read_text())
        release = meta["versions"].get("anemoi-training") or info.parent.parent.name
        out.append((release, meta.get("model") or info.parent.name, info.parent))
    return sorted(out, key=lambda c: (_key(c[0]), c[1]))


CASES = _cases()
#: (release, model, kind) -> {"converts", "loads", "predicts"}: what the matrix shows
RESULTS: dict[tuple[str, str, str], dict[str, str]] = {}
#: release -> the outcome of anemoi-inference run on its converted GNN inference file
FORECASTS: dict[str, str] = {}


def _rule(release: str, model: str) -> dict:
    """compatibility.toml's entry for this release (and model), merged: tolerance, reason, gap."""
    rel = COMPAT.get("release", {}).get(release, {})
    return {**{k: v for k, v in rel.items() if k != "model"}, **rel.get("model", {}).get(model, {})}


def _params() -> list:
    out = []
    for release, model, folder in CASES:
        for kind in SOURCES:
            rule = _rule(release, model)
            gap = rule.get("gap", {}).get(kind) if isinstance(rule.get("gap"), dict) else None
            marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
            out.append(pytest.param(release, model, folder, kind, marks=marks,
                                    id=f"{release}-{model}-{kind}"))
    return out


def _reference(folder: Path) -> tuple[torch.Tensor, np.ndarray]:
    with np.load(folder / "reference.npz", allow_pickle=False) as z:
        outputs = [k for k in z.files if k == "output" or k.startswith("output.")]
        assert len(outputs) == 1, z.files
        return torch.from_numpy(z["input"].copy()), z[outputs[0]].copy()


def _one_line(e: BaseException, anc: Path) -> str:
    """The error's first line, without the temporary path (the matrix must be the same each run)."""
    text = str(e).replace(f"{anc}: ", "").replace(str(anc), "model.anc")
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line}"[:200].replace("|", "\\|")


@pytest.mark.parametrize(("release", "model", "folder", "kind"), _params())
def test_release_file_converts_loads_and_predicts(release: str, model: str, folder: Path, kind: str,
                                                  tmp_path: Path) -> None:
    cell = RESULTS.setdefault((release, model, kind), {})
    anc = tmp_path / "model.anc"
    try:
        report = convert(folder / SOURCES[kind], anc)
    except Exception as e:
        cell["converts"] = f"no: {_one_line(e, anc)}"
        raise
    cell["converts"] = "yes" + (f" ({', '.join(report.steps)})" if report.steps else "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_ = load_model(anc)
    except Exception as e:
        cell["loads"] = f"no: {_one_line(e, anc)}"
        raise
    cell["loads"] = "yes"
    x, expected = _reference(folder)
    with torch.no_grad():
        out = model_.predict_step({"data": x.clone()})
    got = out["data"].numpy()
    # Compare meaning: one value per grid point and output variable. Releases differ in the
    # singleton batch/time/ensemble dimensions they return, never in the grid or variables.
    assert got.size == expected.size and got.shape[-1] == expected.shape[-1], (got.shape, expected.shape)
    got, expected = got.reshape(-1, got.shape[-1]), expected.reshape(-1, expected.shape[-1])
    assert got.dtype == expected.dtype
    rule = _rule(release, model)
    diff = float(np.abs(got.astype(np.float64) - expected).max())
    if np.array_equal(got, expected):
        cell["predicts"] = "equal, bit for bit"
        return
    atol = rule.get("atol")
    if atol is None:
        cell["predicts"] = f"differs (max abs diff {diff:.3g})"
        raise AssertionError(f"{release}/{model} {kind}: predict_step differs, max abs diff {diff:.3g}")
    cell["predicts"] = f"within {atol:g} (max {diff:.2g}): {rule['reason']}"
    assert diff <= atol, f"{release}/{model} {kind}: max abs diff {diff:.3g} > {atol}"


def _render() -> str:
    lines = [
        "# Compatibility: older anemoi checkpoints in today's anemoi",
        "",
        "Generated by `tests/test_anemoi_releases.py` (`make test-anemoi`); do not edit by hand:",
        "`ANEMOI_CKPT_WRITE_MATRIX=1 make test-anemoi` rewrites it from the test results.",
        "",
        "Each row is a genuine file written by that anemoi-training release's own `AnemoiTrainer`",
        "(`fixtures/legacy/anemoi/<release>/<model>/`). *converts*: `anemoi-ckpt convert` (with the",
        "translation steps it applied); *loads*: `anemoi_ckpt.anemoi.load_model` with the installed",
        "anemoi-models; *predicts*: `predict_step` on the input recorded in the release's own",
        "environment, against the output recorded there.",
        "",
        "| release | anemoi-models | model | file | converts | loads | predicts |",
        "|---|---|---|---|---|---|---|",
    ]
    for release, model, folder in CASES:
        models_v = json.loads((folder / "versions.json").read_text())["versions"].get("anemoi-models", "?")
        for kind in SOURCES:
            cell = RESULTS.get((release, model, kind), {})
            lines.append(f"| {release} | {models_v} | {model} | {kind} | {cell.get('converts', '-')} | "
                         f"{cell.get('loads', '-')} | {cell.get('predicts', '-')} |")
    lines += [
        "",
        "## A forecast with anemoi-inference",
        "",
        "`anemoi-inference run` with `runner: anc` (a process in which `torch.load` raises) on each",
        "release's converted GNN inference file, 24 h from today's anemoi-datasets dataset of the same",
        "NetCDF. Where it cannot run, `fixtures/legacy/anemoi/compatibility.toml` says why.",
        "",
        "| release | forecast |",
        "|---|---|",
    ]
    lines += [f"| {r} | {FORECASTS.get(r, '-')} |" for r in sorted(FORECASTS, key=_key)]
    return "\n".join(lines) + "\n"


def _forecast_params() -> list:
    """One converted file per release: its GNN inference file (every release has one)."""
    out = []
    for release, model, folder in CASES:
        if model != "gnn":
            continue
        gap = _rule(release, model).get("forecast_gap")
        marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
        out.append(pytest.param(release, folder, marks=marks, id=release))
    return out


@pytest.mark.parametrize(("release", "folder"), _forecast_params())
def test_anemoi_inference_forecasts_from_a_converted_release_file(release: str, folder: Path,
                                                                  dataset: Path, tmp_path: Path) -> None:
    """``anemoi-inference run`` with ``runner: anc`` (a subprocess in which torch.load raises)."""
    anc = tmp_path / "model.anc"
    convert(folder / "inference-last.ckpt", anc)
    nc = tmp_path / "forecast.nc"
    config = _forecast(dataset, anc, "anc", nc)
    # compatibility.toml: what an operator must add to run this release's model on today's data
    pre = _rule(release, "gnn").get("forecast_pre_processors")
    if pre:
        config["pre_processors"] = list(pre)
    r = _run(tmp_path, "run", config, guard=True)
    if r.returncode != 0:
        # anemoi-inference's own one-line reason (its "💣" line), without the log timestamp
        why = next((re.sub(r"^\S+ \S+ [A-Z]+ ", "", ln).lstrip("💣 ").strip()
                    for ln in r.stderr.splitlines() if "💣" in ln), r.stderr.strip()[-160:])
        FORECASTS[release] = f"no: {why}"[:200].replace("|", "\\|")
    else:
        FORECASTS[release] = "yes" + (f" (pre_processors: {', '.join(pre)})" if pre else "")
    assert r.returncode == 0, r.stderr[-3000:]
    got = _read(nc)
    assert got["time"].shape == (1 + LEAD_HOURS // 6,)
    assert np.isfinite(got["2t"]).all() and not np.array_equal(got["2t"][0], got["2t"][-1])


def test_compatibility_matrix_is_current() -> None:
    expected = {(r, m, k) for r, m, _ in CASES for k in SOURCES}
    if set(RESULTS) != expected or set(FORECASTS) != {p.values[0] for p in _forecast_params()}:
        pytest.skip("the matrix needs every release test in this run")
    text = _render()
    if os.environ.get("ANEMOI_CKPT_WRITE_MATRIX") == "1":
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/compatibility.md is out of date: rerun with ANEMOI_CKPT_WRITE_MATRIX=1"


def test_an_untranslated_old_layout_fails_in_one_line_naming_versions_and_keys(tmp_path: Path) -> None:
    """A 0.2.2 file converted with --keep-layout keeps its 0.2.2 config: loading it with today's
    anemoi-models names the file, the anemoi versions it records and the config key at fault."""
    from anemoi_ckpt.errors import FormatError

    anc = tmp_path / "kept.anc"
    convert(ROOT / "0.2.2" / "gnn" / "inference-last.ckpt", anc, keep_layout=True)
    with pytest.raises(FormatError) as e:
        load_model(anc)
    text = str(e.value)
    assert text.startswith(f"{anc}: ") and "\n" not in text
    assert "anemoi-training 0.2.2 with anemoi-models 0.3.0" in text
    assert "data_indices.data.data.input.name_to_index" in text      # the first key no step explained
    assert "'anemoi-ckpt convert FILE NEW.anc' brings them forward" in text   # and the way out
    convert(anc, tmp_path / "forward.anc")                             # which works
    assert load_model(tmp_path / "forward.anc") is not None
