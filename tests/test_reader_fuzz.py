"""The ``.anc`` reader against crafted input (issue 16).

1. A bounded fuzz: the golden files of fixtures/format-*/ with bytes changed, cut or inserted are
   opened, inspected, verified and read in full; every step gives a result or an ``AncError``
   (one line naming the file), never another exception.
2. Sections standing in for each other (issue 16, item 8): a manifest whose tensor section
   ``name`` and ``path`` disagree, two sections claiming one name or path, a role that does not
   match its path, or an empty or malformed ``content_id`` is refused when the file is opened;
   ``verify`` can no longer call a file with damaged weights intact.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anemoi_ckpt
from anemoi_ckpt.errors import AncError, FormatError
from anemoi_ckpt.lineage.view import RENDERERS, check_lineage
from anemoi_ckpt.reader import UnknownSectionWarning
from anemoi_ckpt.summary import render, summarize
from tests.conftest import one_error_line, run_cli, section_span
from tests.test_damaged import Archive

REPO = Path(__file__).resolve().parents[1]
GOLDEN = sorted(REPO.glob("fixtures/format-*/*.anc"))
FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def exercise(path: Path) -> None:
    """Everything a user can ask of a file; each step a result or an AncError."""
    try:
        ck = anemoi_ckpt.open(path)
    except AncError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
        return
    steps = [
        lambda: render(summarize(ck)),
        lambda: ck.verify(progress=False),
        lambda: check_lineage(ck.lineage, path, ck.uuid),
        lambda: [draw(ck.lineage) for draw in RENDERERS.values()],
        lambda: ck.supporting_arrays,
        lambda: [ck.document(n) for n in ck.documents()],
        lambda: [ck.carried_bytes(n) for n in ck.carried()],
        lambda: [_sum(t) for s in ck.tensor_sections() for t in ck.state_dict(s).values()],
    ]
    with ck:
        for step in steps:
            try:
                step()
            except AncError as e:
                assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)


def _sum(t: torch.Tensor) -> float | int:
    """Touch every element. Only the arithmetic of this test may meet a dtype the installed torch
    cannot compute with (the reader itself handled it); no other step's TypeError is excused."""
    if t.dtype == torch.bool or not t.is_floating_point():
        return t.numel()
    try:
        return float(t.double().sum())
    except TypeError as e:
        assert "not implemented" in str(e) or "unsupported" in str(e).lower(), e
        return t.numel()


# --- 1. fuzz ------------------------------------------------------------------------------------

def _regions(blob: bytes, path: Path) -> list[tuple[int, int]]:
    """Where a changed byte tests the reader rather than only a digest: the manifest, the
    lineage, the safetensors headers, the zip directory; and anywhere."""
    out = [(0, len(blob))]
    for rel in ("manifest.json", "lineage.json", "metadata.json"):
        out.append(section_span(path, rel))
    out.append((max(0, len(blob) - 600), len(blob)))  # central directory and end records
    with anemoi_ckpt.open(path) as ck:  # weights.safetensors, or -zstd compressed (1.2)
        start, _ = section_span(path, ck.tensor_section_rel("weights"))
    out.append((start, start + 200))
    return out


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.name}")
@FUZZ
@given(data=st.data())
def test_mutated_golden_files(tmp_path: Path, golden: Path, data: st.DataObject) -> None:
    blob = bytearray(golden.read_bytes())
    regions = _regions(bytes(blob), golden)
    for _ in range(data.draw(st.integers(1, 4), label="changes")):
        lo, hi = data.draw(st.sampled_from(regions), label="region")
        at = min(data.draw(st.integers(lo, max(lo, hi - 1)), label="offset"), len(blob) - 1)
        how = data.draw(st.sampled_from(["set", "flip", "cut", "insert", "digit"]), label="how")
        if how == "set":
            blob[at] = data.draw(st.integers(0, 255))
        elif how == "flip":
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "cut":
            del blob[at:at + data.draw(st.integers(1, 64))]
        elif how == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:  # a digit or bracket where JSON numbers and nesting live
            blob[at] = ord(data.draw(st.sampled_from("0123456789[]{}\"-9e")))
    path = tmp_path / golden.name
    path.write_bytes(bytes(blob))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownSectionWarning)
        exercise(path)


# --- 2. sections standing in for each other (item 8) ---------------------------------------------

def _damage_weights(arc: Archive) -> None:
    """Change the last byte of the weights payload: the bytes no longer match their digest."""
    data = bytearray(arc["weights.safetensors"])
    data[-1] ^= 0xFF
    arc["weights.safetensors"] = bytes(data)


def test_stand_in_weights_section_is_refused(tmp_path: Path, demo_file: Path) -> None:
    """The reported attack: the damaged weights renamed, an intact copy named ``weights``."""
    arc = Archive(demo_file)
    intact = arc["weights.safetensors"]
    _damage_weights(arc)
    arc["shadow.safetensors"] = intact
    m = arc.manifest
    weights = arc.section(m, "weights.safetensors")
    stand_in = copy.deepcopy(weights)
    stand_in["path"] = "shadow.safetensors"
    stand_in["name"] = weights["name"] = "shadow"  # both verified against the intact copy
    m["sections"].append(stand_in)
    m["content_id"] = ""  # nothing is named weights: the recomputed content id is empty too
    arc.manifest = m
    bad = arc.write(tmp_path / "stand-in.anc")
    with pytest.raises(FormatError, match="invalid content_id"):
        anemoi_ckpt.open(bad)
    m["content_id"] = json.loads(Archive(demo_file)["manifest.json"])["content_id"]
    arc.manifest = m
    bad = arc.write(tmp_path / "stand-in-2.anc")
    with pytest.raises(FormatError, match="name 'shadow' and path disagree"):
        anemoi_ckpt.open(bad)
    one_error_line(run_cli("verify", str(bad)), f"{bad}: section weights.safetensors: name 'shadow'")


@pytest.mark.parametrize("content_id", ["", "sha256:", "sha256:" + "0" * 63, "SHA256:" + "a" * 64,
                                        "sha256:" + "A" * 64, "a" * 64])
def test_empty_or_malformed_content_id_is_refused(tmp_path: Path, content_id: str) -> None:
    """An empty recorded content id matched an empty recomputation; now it never opens."""
    src = tmp_path / "src.anc"
    anemoi_ckpt.save(src, {})
    arc = Archive(src)
    m = arc.manifest
    m["content_id"] = content_id
    arc.manifest = m
    bad = arc.write(tmp_path / "bad.anc")
    with pytest.raises(FormatError, match="invalid content_id"):
        anemoi_ckpt.open(bad)
    one_error_line(run_cli("verify", str(bad)), f"{bad}: section manifest.json: invalid content_id")


def test_missing_aliases_and_format_are_refused(tmp_path: Path, demo_file: Path) -> None:
    """Required by docs/format.md 4.1 and the published schema, so required by the reader."""
    arc = Archive(demo_file)
    m = arc.manifest
    del arc.section(m, "weights.safetensors")["tensors"]["aliases"]
    arc.manifest = m
    with pytest.raises(FormatError, match="aliases: Field required"):
        anemoi_ckpt.open(arc.write(tmp_path / "no-aliases.anc"))
    arc = Archive(demo_file)
    m = arc.manifest
    del m["format"]
    arc.manifest = m
    with pytest.raises(FormatError, match="does not describe an anemoi-ckpt file"):
        anemoi_ckpt.open(arc.write(tmp_path / "no-format.anc"))


def _training_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.anc"
    with anemoi_ckpt.Writer(path) as w:
        w.add("layer.weight", torch.arange(6.0).reshape(2, 3))
        w.add("exp_avg", torch.ones(3), section="optimizer")
        w.add_document("training-state", {"epoch": 1})
        w.add_document("hyper-parameters", {"lr": 0.1})
        w.add_carried("extra/a.bin", b"abc")
        w.add_carried("extra/b.bin", b"def")
    return path


_FIELDS = st.sampled_from(["name", "path", "role", "duplicate", "tensors"])
_NAMES = st.sampled_from(["shadow", "weights", "graph", "buffers", "optimizer", "training-state",
                          "hyper-parameters", "extra/a.bin", "", "a/b", None])
_PATHS = st.sampled_from(["shadow.safetensors", "weights.safetensors", "optimizer.safetensors",
                          "documents/training-state.json", "documents/hyper-parameters.json",
                          "documents/shadow.json", "metadata.json", "lineage.json",
                          "carried/0.bin", "carried/1.bin", "graph.safetensors"])
_ROLES = st.sampled_from(["weights", "graph", "buffers", "tensors", "document", "carried",
                          "metadata", "lineage", "anemoi-metadata", "supporting-array"])


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_section_can_stand_in_for_another(tmp_path: Path, data: st.DataObject) -> None:
    """Whatever a manifest says about name, path and role, a file with damaged weights is never
    called intact: it is refused on open, or ``verify`` finds the damage."""
    src = _training_file(tmp_path)
    arc = Archive(src)
    intact = arc["weights.safetensors"]
    _damage_weights(arc)
    m = arc.manifest
    sections: list[dict[str, Any]] = m["sections"]
    # A candidate stand-in: the weights' manifest entry again, over an intact copy of their bytes.
    twin = copy.deepcopy(next(s for s in sections if s["path"] == "weights.safetensors"))
    near = st.sampled_from(["shadow", "weights", "optimizer"])
    twin["path"] = data.draw(st.sampled_from(["shadow.safetensors", "optimizer.safetensors",
                                              "documents/shadow.json"]), label="twin path")
    twin["name"] = data.draw(near, label="twin name")
    sections[0]["name"] = data.draw(near, label="weights name")
    arc[twin["path"]] = intact
    sections.append(twin)
    if data.draw(st.booleans(), label="empty content id"):
        m["content_id"] = ""
    members = lambda: {n for n, _ in arc.items}  # noqa: E731
    for _ in range(data.draw(st.integers(0, 3), label="edits")):
        i = data.draw(st.integers(0, len(sections) - 1), label="section")
        field = data.draw(_FIELDS, label="field")
        sec = sections[i]
        if field == "name":
            name = data.draw(_NAMES, label="name")
            if name is None:
                sec.pop("name", None)
            else:
                sec["name"] = name
        elif field == "path":
            new = data.draw(_PATHS, label="path")
            if arc.name(new) not in members():
                arc[new] = arc[sec["path"]]  # a member for the new path: only the manifest lies
            sec["path"] = new
        elif field == "role":
            sec["role"] = data.draw(_ROLES, label="role")
        elif field == "duplicate":
            other = copy.deepcopy(sec)
            other["path"] = data.draw(_PATHS, label="copy path")
            if arc.name(other["path"]) not in members():
                arc[other["path"]] = arc[sec["path"]]
            sections.append(other)
        else:
            other = data.draw(st.integers(0, len(sections) - 1), label="table from")
            if sections[other].get("tensors"):
                sec["tensors"] = copy.deepcopy(sections[other]["tensors"])
            else:
                sec.pop("tensors", None)
    arc.manifest = m
    bad = arc.write(tmp_path / "bad.anc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownSectionWarning)
        try:
            ck = anemoi_ckpt.open(bad)
        except AncError as e:
            assert str(e).startswith(f"{bad}: ") and "\n" not in str(e)
            return
        with ck:
            report = ck.verify(progress=False)
    assert not report.ok, "a file with damaged weights was reported intact"


def test_golden_files_still_open_and_verify() -> None:
    for path in GOLDEN:
        with anemoi_ckpt.open(path) as ck:
            assert ck.verify(progress=False).ok, path
            assert ck.lineage.records[0].uuid == ck.uuid


def test_records0_must_describe_the_file(tmp_path: Path, demo_file: Path) -> None:
    """inspect, load and verify read the lineage through the reader, which checks records[0]."""
    for key, value in (("uuid", "00000000-0000-4000-8000-000000000000"), ("kind", "adapter"),
                       ("content_id", "sha256:" + "0" * 64)):
        arc = Archive(demo_file)
        block = json.loads(arc["lineage.json"])
        block["records"][0][key] = value
        arc["lineage.json"] = json.dumps(block).encode()
        bad = arc.write(tmp_path / f"{key}.anc")
        with anemoi_ckpt.open(bad) as ck, pytest.raises(FormatError, match=f"records\\[0\\] has {key}"):
            ck.lineage  # noqa: B018
        out = run_cli("verify", str(bad))
        assert out.returncode == 1 and "Traceback" not in out.stderr
        one_error_line(run_cli("inspect", str(bad)), f"records[0] has {key}")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(2, 3000))
def test_json_nesting_limit(tmp_path: Path, demo_file: Path, depth: int) -> None:
    """metadata.json nested ``depth`` levels: read when at most 512 deep, refused in one line
    beyond (a number any implementation can check), never a RecursionError."""
    from anemoi_ckpt.container.schema import MAX_JSON_DEPTH

    arc = Archive(demo_file)
    block = json.loads(arc["metadata.json"])
    block["user"] = {"x": 1}
    k = depth - 1  # the document itself is one level
    raw = json.dumps(block).replace('{"x": 1}', '{"a":' * k + "1" + "}" * k)
    arc["metadata.json"] = raw.encode()
    bad = arc.write(tmp_path / f"deep-{depth}.anc")
    with anemoi_ckpt.open(bad) as ck:
        if depth <= MAX_JSON_DEPTH:
            assert ck.metadata.user["a"] is not None
            assert render(summarize(ck))
        else:
            with pytest.raises(FormatError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
                ck.metadata  # noqa: B018
    if depth in (MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1):
        out = run_cli("inspect", str(bad))
        assert (out.returncode == 0) == (depth <= MAX_JSON_DEPTH) and "Traceback" not in out.stderr


@pytest.mark.parametrize("depth", [512, 513])
def test_json_nesting_limit_edges(tmp_path: Path, demo_file: Path, depth: int) -> None:
    test_json_nesting_limit.hypothesis.inner_test(tmp_path, demo_file, depth)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_only_in_anemoi_json(tmp_path: Path, demo_file: Path, token: str) -> None:
    """Strict JSON (4.2) everywhere but anemoi.json (7.1), including documents under verify."""
    arc = Archive(demo_file)
    block = json.loads(arc["metadata.json"])
    block["user"] = {"x": 1}
    arc["metadata.json"] = json.dumps(block).replace('{"x": 1}', '{"x": %s}' % token).encode()
    anemoi = json.loads(arc["anemoi-metadata/anemoi.json"])
    anemoi["x"] = float("nan")
    arc["anemoi-metadata/anemoi.json"] = json.dumps(anemoi).encode()
    bad = arc.write(tmp_path / "nan.anc")
    with anemoi_ckpt.open(bad) as ck:
        assert ck.anemoi_metadata["x"] != ck.anemoi_metadata["x"]  # NaN, as anemoi wrote it
        with pytest.raises(FormatError, match=f"{token} is not allowed"):
            ck.metadata  # noqa: B018
        report = ck.verify(progress=False)
    assert not report.ok and [s.path for s in report.damaged] == ["metadata.json"]


def test_control_characters_in_member_names(tmp_path: Path) -> None:
    """C0 controls (U+0000 to U+001F) and DEL (U+007F) make a member name unsafe (2.7)."""
    src = tmp_path / "src.anc"
    anemoi_ckpt.save(src, {})
    for ch in ("\x01", "\x1b", "\x7f"):
        arc = Archive(src)
        arc.add_raw(f"{arc.root}/carried/x{ch}.bin", b"x")
        bad = arc.write(tmp_path / "ctl.anc", refresh=False)
        with pytest.raises(FormatError, match="unsafe member name"):
            anemoi_ckpt.open(bad)
