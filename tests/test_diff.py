"""``diff`` and ``anemoi-ckpt diff`` on real files written with the public API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import anemoi_ckpt
from anemoi_ckpt.compare.stats import compare_arrays, compare_tensors
from tests.conftest import run_cli

INF = float("inf")


def save(path: Path, tensors: dict[str, torch.Tensor], **kw: object) -> Path:
    anemoi_ckpt.save(path, tensors, durable=False, **kw)
    return path


def write_with_document(path: Path, tensors: dict[str, torch.Tensor], doc: object) -> Path:
    with anemoi_ckpt.Writer(path, durable=False) as w:
        for name, t in tensors.items():
            w.add(name, t)
        w.add_document("training-state", doc)
    return path


def base() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(4, 5, generator=g), "b": torch.randn(5, generator=g),
            "steps": torch.arange(6, dtype=torch.int64)}


def only_change(report: anemoi_ckpt.DiffReport, section: str = "weights"):  # noqa: ANN201
    [sd] = [s for s in report.sections if s.name == section]
    [c] = sd.changes
    return c


# --- identical and value changes ---------------------------------------------------------------
def test_identical_files_with_different_uuids(tmp_path: Path) -> None:
    a, b = save(tmp_path / "a.anc", base()), save(tmp_path / "b.anc", base())
    report = anemoi_ckpt.diff(a, b)
    assert report.identical and report.content_id_equal and report.lineage is None
    assert [(s.name, s.unchanged, s.changes) for s in report.sections] == [("weights", 3, [])]
    out = run_cli("diff", str(a), str(b))
    assert out.returncode == 0, out.stderr
    assert "weights: 0 changed, 0 added, 0 removed, 3 unchanged" in out.stdout
    assert out.stdout.strip().endswith("are identical")


def test_perturbed_tensor_exact_stats(tmp_path: Path) -> None:
    sd = base()
    sd2 = {**sd, "w": sd["w"].clone()}
    sd2["w"][1, 2] += 0.5
    sd2["w"][3, 4] -= 0.25
    report = anemoi_ckpt.diff(save(tmp_path / "a.anc", sd), save(tmp_path / "b.anc", sd2))
    c = only_change(report)
    a64, b64 = sd["w"].double(), sd2["w"].double()
    d = (b64 - a64).abs()
    assert (c.name, c.change, c.dtype, c.shape) == ("w", "value", ("F32", "F32"), ([4, 5], [4, 5]))
    assert c.stats.numel == 20 and c.stats.differing == 2 and c.stats.outside == 2
    assert c.stats.max_abs == d.max().item()
    assert c.stats.max_rel == (d / a64.abs()).max().item()
    assert not report.identical and not report.content_id_equal
    assert report.sections[0].unchanged == 2


def test_added_removed_dtype_and_shape(tmp_path: Path) -> None:
    sd = {"keep": torch.ones(3), "gone": torch.ones(2), "cast": torch.linspace(0, 1, 7),
          "reshaped": torch.zeros(2, 3)}
    sd2 = {"keep": torch.ones(3), "cast": torch.linspace(0, 1, 7).half(),
           "reshaped": torch.zeros(3, 2), "new": torch.zeros(4, 1, dtype=torch.int32)}
    a, b = save(tmp_path / "a.anc", sd), save(tmp_path / "b.anc", sd2)
    changes = {c.name: c for c in anemoi_ckpt.diff(a, b).sections[0].changes}
    assert {n: c.change for n, c in changes.items()} == {
        "gone": "removed", "cast": "layout", "reshaped": "layout", "new": "added"}
    # A dtype-only change is still compared by value: what the cast lost.
    cast = changes["cast"]
    lost = (torch.linspace(0, 1, 7).half().double() - torch.linspace(0, 1, 7).double()).abs()
    assert cast.dtype == ("F32", "F16") and cast.stats.max_abs == lost.max().item()
    assert changes["reshaped"].stats is None and changes["new"].dtype == (None, "I32")
    out = run_cli("diff", str(a), str(b))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0] == "weights: 2 changed, 1 added, 1 removed, 1 unchanged"
    assert "  - gone" in lines and "  + new  I32 [4, 1]" in lines
    assert "  ! reshaped  shape [2, 3] -> [3, 2]" in lines
    assert any(line.startswith("  ! cast  dtype F32 -> F16  max|Δ| ") for line in lines)


def test_atol_makes_small_change_within_tolerance(tmp_path: Path) -> None:
    sd = base()
    a = save(tmp_path / "a.anc", sd)
    b = save(tmp_path / "b.anc", {**sd, "w": sd["w"] + 1e-6})
    assert not anemoi_ckpt.diff(a, b).identical
    report = anemoi_ckpt.diff(a, b, atol=1e-5)
    c = only_change(report)
    assert report.identical and c.stats.within_tolerance and c.stats.differing > 0
    rel = anemoi_ckpt.diff(a, b, rtol=1e-12)
    assert not rel.identical  # 1e-6 is far beyond 1e-12 of values of order 1
    assert run_cli("diff", str(a), str(b)).returncode == 1
    out = run_cli("diff", str(a), str(b), "--atol", "1e-5")
    assert out.returncode == 0, out.stdout
    assert "(1 within tolerance)" in out.stdout and "within tolerance" in out.stdout.splitlines()[1]


def test_nan_handling(tmp_path: Path) -> None:
    nan = float("nan")
    a = save(tmp_path / "a.anc", {"x": torch.tensor([nan, 1.0, 2.0, nan, -0.0])})
    same = save(tmp_path / "same.anc", {"x": torch.tensor([nan, 1.0, 2.0, nan, 0.0])})
    b = save(tmp_path / "b.anc", {"x": torch.tensor([nan, 1.0, nan, 3.0, 0.0])})
    # NaN vs NaN is equal, -0.0 == 0.0: different bytes, equal values.
    report = anemoi_ckpt.diff(a, same)
    assert report.identical and only_change(report).stats.differing == 0
    report = anemoi_ckpt.diff(a, b, atol=1e9)
    st_ = only_change(report).stats
    assert (st_.differing, st_.outside, st_.max_abs, st_.max_rel) == (2, 2, INF, INF)
    assert not report.identical  # NaN vs a number is never within tolerance
    out = run_cli("diff", str(a), str(b), "--json")
    assert out.returncode == 1
    stats = json.loads(out.stdout)["sections"][0]["changes"][0]["stats"]
    assert stats["max_abs"] == "inf" and stats["differing"] == 2


def test_integer_and_bool_tensors_exact(tmp_path: Path) -> None:
    big = 2**62
    a = save(tmp_path / "a.anc", {"i": torch.tensor([0, big, -(2**63), 5]),
                                  "m": torch.tensor([True, False, True])})
    b = save(tmp_path / "b.anc", {"i": torch.tensor([0, -big, 2**63 - 1, 5]),
                                  "m": torch.tensor([True, True, False])})
    changes = {c.name: c.stats for c in anemoi_ckpt.diff(a, b).sections[0].changes}
    assert changes["i"].differing == 2 and changes["i"].max_abs == 2**64 - 1
    assert isinstance(changes["i"].max_abs, int)
    assert changes["m"].differing == 2 and changes["m"].max_abs == 1
    assert compare_arrays(np.array([3], np.uint64), np.array([2**64 - 1], np.uint64)).max_abs == 2**64 - 4


def test_large_tensor_chunked_matches_torch(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8 << 20, generator=g)
    y = x.clone()
    idx = torch.randint(0, x.numel(), (5000,), generator=g)
    y[idx] += torch.randn(5000, generator=g) * 1e-2
    report = anemoi_ckpt.diff(save(tmp_path / "a.anc", {"x": x}), save(tmp_path / "b.anc", {"x": y}))
    s = only_change(report).stats
    d = (y.double() - x.double()).abs()
    assert s.numel == x.numel() and s.differing == int((x != y).sum())
    assert s.max_abs == d.max().item()
    assert s.max_rel == (d / x.double().abs().clamp_min(np.finfo(np.float64).tiny)).max().item()
    # Chunking is exact: any chunk size gives the same statistics.
    assert compare_tensors(x[:100_003], y[:100_003], chunk=997) == compare_tensors(x[:100_003], y[:100_003], chunk=1 << 30)


def test_digest_equal_tensors_are_not_read(tmp_path: Path) -> None:
    """Corrupt an unchanged tensor's bytes in B on disk: diff trusts the equal digests and never
    reads them (so it reports nothing), while verify proves the bytes really differ."""
    sd = base()
    a = save(tmp_path / "a.anc", sd)
    b = save(tmp_path / "b.anc", {**sd, "b": sd["b"] + 1})
    with anemoi_ckpt.open(b) as ck:
        m = ck.tensors()
        start, n = m._offsets["w"], m.entries["w"].nbytes
    data = bytearray(b.read_bytes())
    data[start:start + n] = b"\x7f" * n
    b.write_bytes(bytes(data))
    report = anemoi_ckpt.diff(a, b)
    assert [c.name for c in report.sections[0].changes] == ["b"]
    assert report.sections[0].unchanged == 2
    with anemoi_ckpt.open(b) as ck:
        assert ck.verify().damaged[0].damaged_tensors == ["w"]


# --- metadata, arrays, lineage -----------------------------------------------------------------
def test_metadata_document_and_kind_differences(tmp_path: Path) -> None:
    md = {"version": "2.0", "config": {"training": {"lr": 1e-3}}, "long": "x" * 200}
    a = save(tmp_path / "a.anc", base(), anemoi_metadata=md, metadata={"description": "base"})
    b = save(tmp_path / "b.anc", base(), kind="training", metadata={"description": "tuned"},
             anemoi_metadata={**md, "config": {"training": {"lr": 1e-4}}, "dataset": "era5"})
    paths = {m.path: m for m in anemoi_ckpt.diff(a, b).metadata}
    assert set(paths) == {"kind", "metadata.description", "anemoi.config.training.lr",
                          "anemoi.dataset"}  # the per-file anemoi uuid is identity, not content
    lr = paths["anemoi.config.training.lr"]
    assert (lr.change, lr.old, lr.new) == ("changed", "0.001", "0.0001")
    assert (paths["anemoi.dataset"].change, paths["anemoi.dataset"].new) == ("added", '"era5"')
    assert paths["kind"].old == '"inference"' and paths["kind"].new == '"training"'
    c = save(tmp_path / "c.anc", base(), anemoi_metadata={**md, "long": "y" * 200},
             metadata={"description": "base"})
    [long] = anemoi_ckpt.diff(a, c).metadata
    assert long.path == "anemoi.long" and len(long.old) <= 80 and long.old.endswith("...")

    d1 = write_with_document(tmp_path / "d1.anc", base(), {"epoch": 3, "loss": [1.0, 0.5]})
    d2 = write_with_document(tmp_path / "d2.anc", base(), {"epoch": 4, "loss": [1.0, 0.5, 0.25]})
    doc = anemoi_ckpt.diff(d1, d2).metadata
    assert [(m.path, m.change) for m in doc] == [("documents.training-state.epoch", "changed"),
                                                 ("documents.training-state.loss[2]", "added")]
    out = run_cli("diff", str(d1), str(d2))
    assert out.returncode == 1
    assert "  ~ documents.training-state.epoch  3 -> 4" in out.stdout.splitlines()


def test_supporting_arrays_by_value(tmp_path: Path) -> None:
    lat = np.linspace(-90, 90, 11)
    a = save(tmp_path / "a.anc", base(), anemoi_metadata={"version": "2.0"},
             supporting_arrays={"latitudes": lat, "mask": np.ones(3, bool)})
    b = save(tmp_path / "other-name.anc", base(), anemoi_metadata={"version": "2.0"},
             supporting_arrays={"latitudes": lat + np.eye(11)[4] * 0.5, "grid": np.zeros(2)})
    report = anemoi_ckpt.diff(a, b)
    changes = {c.name: c for c in report.supporting_arrays}
    assert {n: c.change for n, c in changes.items()} == {"latitudes": "value", "mask": "removed",
                                                         "grid": "added"}
    assert changes["latitudes"].stats.max_abs == 0.5 and changes["latitudes"].stats.differing == 1
    assert not report.metadata  # array paths name the file; they are compared by value instead
    same = save(tmp_path / "same.anc", base(), anemoi_metadata={"version": "2.0"},
                supporting_arrays={"latitudes": lat, "mask": np.ones(3, bool)})
    assert anemoi_ckpt.diff(a, same).identical


def test_lineage_relation(tmp_path: Path) -> None:
    a = save(tmp_path / "a.anc", base())
    b = save(tmp_path / "b.anc", base(), parents=[a], operation="fine-tune")
    c = save(tmp_path / "c.anc", base(), parents=[b])
    other = save(tmp_path / "o.anc", base(), parents=[a])
    assert anemoi_ckpt.diff(a, b).lineage == "B descends from A"
    assert anemoi_ckpt.diff(c, a).lineage == "A descends from B"  # via b: an ancestor's record
    with anemoi_ckpt.open(a) as ck:
        assert anemoi_ckpt.diff(c, other).lineage == f"A and B share ancestor {ck.uuid}"
        assert anemoi_ckpt.diff(ck, ck).lineage == "A and B are the same file"
    assert "lineage: B descends from A" in run_cli("diff", str(a), str(b)).stdout


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6), data=st.data())
def test_property_reports_exactly_the_perturbed_names(tmp_path_factory: pytest.TempPathFactory,
                                                      sizes: list[int], data: st.DataObject) -> None:
    dtypes = [torch.float32, torch.float64, torch.int32, torch.bfloat16]
    sd = {f"t{i}": (torch.arange(n) * (i + 1) - 7).to(dtypes[i % len(dtypes)]) for i, n in enumerate(sizes)}
    perturbed = data.draw(st.sets(st.sampled_from([k for k, t in sd.items() if t.numel()])
                                  if any(t.numel() for t in sd.values()) else st.nothing()))
    sd2 = dict(sd)
    for name in perturbed:
        t = sd[name].clone()
        t[data.draw(st.integers(0, t.numel() - 1))] += data.draw(st.sampled_from([1, 3, -2]))
        sd2[name] = t
    d = tmp_path_factory.mktemp("prop")
    report = anemoi_ckpt.diff(save(d / "a.anc", sd), save(d / "b.anc", sd2))
    assert {c.name for c in report.sections[0].changes} == perturbed
    assert all(c.change == "value" and c.stats.differing == 1 for c in report.sections[0].changes)
    assert report.identical == (not perturbed)


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_json_schema(tmp_path: Path) -> None:
    sd = base()
    a = save(tmp_path / "a.anc", sd, sections={"graph": {"e": torch.ones(2)}})
    b = save(tmp_path / "b.anc", {**sd, "w": sd["w"] * 2}, sections={"graph": {"e": torch.ones(2)}})
    out = run_cli("diff", str(a), str(b), "--json", "--section", "weights")
    assert out.returncode == 1, out.stderr
    r = json.loads(out.stdout)
    assert set(r) == {"a", "b", "identical", "atol", "rtol", "kind", "content_id",
                      "content_id_equal", "lineage", "sections", "metadata", "supporting_arrays"}
    assert r["identical"] is False and r["content_id_equal"] is False
    [sec] = r["sections"]  # --section: only the weights
    assert sec["counts"] == {"value": 1, "layout": 0, "added": 0, "removed": 0}
    assert sec["unchanged"] == 2 and sec["present"] == "both"
    [c] = sec["changes"]
    assert set(c) == {"name", "change", "dtype", "shape", "significant", "stats"}
    assert set(c["stats"]) == {"numel", "differing", "outside_tolerance", "max_abs", "max_rel",
                               "within_tolerance"}
    same = run_cli("diff", str(a), str(b), "--json", "--section", "graph")
    assert same.returncode == 0 and json.loads(same.stdout)["identical"] is True


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    a = save(tmp_path / "a.anc", base())
    junk = tmp_path / "junk.anc"
    junk.write_bytes(b"not a zip at all")
    for args in ([str(a), str(tmp_path / "missing.anc")], [str(junk), str(a)],
                 [str(a), str(a), "--section", "nope"]):
        out = run_cli("diff", *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1
        assert out.stderr.startswith("anemoi-ckpt: error: ")
    assert run_cli("diff", str(a)).returncode == 2  # usage: click's 2
    assert run_cli("diff", str(a), str(a), "--rtol", "-1").returncode == 2
