"""Nothing in a source is silently dropped (issue 14): anemoi's metadata under every name it was
written with is read, and every member no reader understands is carried byte for byte."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

import anemoi_ckpt
from anemoi_ckpt.convert import convert
from anemoi_ckpt.errors import FormatError
from tests.conftest import FIXTURES

MD_1_0 = {"version": "1.0", "uuid": "7d5b4b9e-0000-4000-8000-000000000001",
          "dataset": {"variables": ["a", "b"]},
          "data_indices": {"data": {"input": {"full": [0, 1]}, "output": {"full": [0, 1]}}},
          "config": {"training": {"multistep_input": 1}}}


def _torch_file(path, members: dict[str, bytes]) -> None:
    """A real ``torch.save`` file with members appended the way anemoi-utils appends its metadata."""
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, path)
    root = zipfile.ZipFile(path).namelist()[0].split("/")[0]
    with zipfile.ZipFile(path, "a") as zf:
        for name, data in members.items():
            zf.writestr(f"{root}/{name}", data)


def test_old_metadata_name_is_read_translated_and_carried(tmp_path) -> None:
    src, dst = tmp_path / "old.ckpt", tmp_path / "new.anc"
    raw = json.dumps(MD_1_0).encode()
    notes = b"\x00\x01 whatever a tool put here"
    _torch_file(src, {"anemoi-metadata/ai-models.json": raw, "extra/notes.bin": notes})
    report = convert(src, dst)
    assert report.anemoi_metadata and "metadata_v2" in report.steps
    assert report.carried == ["anemoi-metadata/ai-models.json", "extra/notes.bin"]
    with anemoi_ckpt.open(dst) as ck:
        assert ck.anemoi_metadata["version"] == "2.0"          # brought forward ...
        assert ck.carried_bytes("anemoi-metadata/ai-models.json") == raw  # ... the original kept
        assert ck.carried_bytes("extra/notes.bin") == notes
        # no carried member may reuse the base name anemoi-utils looks for
        names = zipfile.ZipFile(dst).namelist()
        assert sum(n.endswith("/anemoi.json") for n in names) == 1
        assert not any(n.endswith("ai-models.json") for n in names)


def test_unchanged_current_metadata_is_not_duplicated(tmp_path) -> None:
    src = FIXTURES / "legacy" / "anemoi" / "gnn" / "inference-last.ckpt"   # anemoi-training 0.17.1
    report = convert(src, tmp_path / "m.anc")
    assert report.carried == [] and report.steps == []


def test_two_metadata_members_are_refused_in_one_line(tmp_path) -> None:
    src = tmp_path / "two.ckpt"
    raw = json.dumps(MD_1_0).encode()
    _torch_file(src, {"anemoi-metadata/anemoi.json": raw, "other/anemoi.json": raw})
    with pytest.raises(FormatError) as e:
        convert(src, tmp_path / "x.anc")
    assert "2 members named anemoi.json" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x.anc").exists()


@pytest.mark.parametrize("release", ["0.2.2", "0.8.1"])
def test_genuine_old_files_keep_their_ai_models_json(release: str, tmp_path) -> None:
    src = FIXTURES / "legacy" / "anemoi" / release / "gnn" / "inference-last.ckpt"
    with zipfile.ZipFile(src) as zf:
        member = next(n for n in zf.namelist() if n.endswith("/ai-models.json"))
        original = zf.read(member)
        flat_arrays = [n for n in zf.namelist() if n.endswith(".numpy")]
    convert(src, tmp_path / "m.anc")
    with anemoi_ckpt.open(tmp_path / "m.anc") as ck:
        assert ck.carried_bytes("anemoi-metadata/ai-models.json") == original
        assert ck.anemoi_metadata["version"] == "2.0"
        # arrays written flat under anemoi-metadata/ (0.3-0.8) land per dataset, none lost
        assert len(flat_arrays) == sum(1 for _ in _leaves(ck.supporting_arrays))


def _leaves(tree):
    for v in tree.values():
        if isinstance(v, dict):
            yield from _leaves(v)
        else:
            yield v


def test_a_release_older_than_any_covered_is_refused_in_one_line(tmp_path) -> None:
    src = tmp_path / "ancient.ckpt"
    md = dict(MD_1_0, provenance_training={"module_versions": {
        "anemoi.models": "0.2.1", "anemoi.training": "0.1.0"}})
    _torch_file(src, {"anemoi-metadata/ai-models.json": json.dumps(md).encode()})
    with pytest.raises(FormatError) as e:
        convert(src, tmp_path / "x.anc")
    text = str(e.value)
    assert "anemoi-training 0.1.0" in text and "anemoi-models 0.2.1" in text and "(w, ...)" in text
    assert "\n" not in text and not (tmp_path / "x.anc").exists()
    convert(src, tmp_path / "kept.anc", keep_layout=True)   # the way out it names


@pytest.mark.parametrize("indices", [{"data": {"input": {"full": [0]}}, "model": {}},
                                     {"data": {"input": {"full": ["x"]}, "output": {"full": [0]}},
                                      "model": {"input": {}, "output": {}}},
                                     {"data": [], "model": 3}])
def test_malformed_1_0_data_indices_never_reach_a_traceback(tmp_path, indices) -> None:
    src = tmp_path / "odd.ckpt"
    _torch_file(src, {"anemoi-metadata/ai-models.json": json.dumps(dict(MD_1_0, data_indices=indices)).encode()})
    try:
        convert(src, tmp_path / "x.anc")
    except FormatError as e:  # refused: one line naming the file
        assert str(e).startswith(str(src)) and "\n" not in str(e)
    else:  # or converted, with the metadata carried as it was
        with anemoi_ckpt.open(tmp_path / "x.anc") as ck:
            assert json.loads(ck.carried_bytes("anemoi-metadata/ai-models.json"))["data_indices"] == indices


def test_a_kept_layout_of_an_uncovered_release_still_translates_for_its_own_release() -> None:
    """The refusal guards conversion only: planning and loading a --keep-layout file in its own
    anemoi-models release must still work."""
    from packaging.version import Version

    from anemoi_ckpt.anemoi.layout import to_installed

    md = {"provenance_training": {"module_versions": {"anemoi.models": "0.2.1"}}}
    tensors, applied = to_installed({"weights": {"w": 1}}, md, Version("0.2.1"), "f.anc")
    assert tensors == {"weights": {"w": 1}} and applied == []
