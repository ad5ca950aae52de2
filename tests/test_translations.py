"""The declarative translation layer: step files, op kinds, engine, and every shipped step
against hand-written before/after layouts in fixtures/legacy/layouts/."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from anemoi_ckpt.errors import FormatError
from anemoi_ckpt.translate import TranslationInput, load_steps, parse_step, plan, translate
from anemoi_ckpt.translate.steps import translations_dir

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ROOT / "fixtures" / "legacy" / "layouts"
STEPS = {s.name: s for s in load_steps()}
TENSOR_STEPS = [n for n, s in STEPS.items() if s.changes_names]
#: steps with name or metadata ops: each needs a before/after layout. Load-only steps (only
#: load_call ops, which translate() never runs) are proven by tests/test_anemoi_releases.py; a
#: layout written for one anyway is still checked.
LAYOUT_STEPS = [n for n, s in STEPS.items()
                if s.changes_names or s.changes_metadata or (LAYOUTS / n / "before.json").exists()]


def _load(step_dir: str) -> tuple[dict, dict]:
    before = json.loads((LAYOUTS / step_dir / "before.json").read_text())
    after = json.loads((LAYOUTS / step_dir / "after.json").read_text())
    return before, after


def _input(before: dict, sections: dict | None = None) -> TranslationInput:
    return TranslationInput(before["source_format"], sections or before["sections"],
                            before.get("anemoi_metadata"), before.get("models_version"))


def _renames(result) -> dict:
    return {sec: {old: list(new) for old, new in m.items()} for sec, m in result.renames.items()}


# ---- each step against its own before/after layout --------------------------------------------

@pytest.mark.parametrize("name", LAYOUT_STEPS)
def test_step_before_after(name: str) -> None:
    before, after = _load(name)
    result = translate(_input(before), steps=[STEPS[name]])
    assert _renames(result) == after["renames"]
    assert [a["name"] for a in result.applied] == after["applied"]
    if "anemoi_metadata" in after:
        assert result.anemoi_metadata == after["anemoi_metadata"]


@pytest.mark.parametrize("name", TENSOR_STEPS)
def test_step_reads_real_torch_file(name: str) -> None:
    """Names read from a real torch state dict by the converter's reader translate as expected."""
    from anemoi_ckpt.convert.sources import detect

    before, after = _load(name)
    source = detect(LAYOUTS / name / "before.pt")
    try:
        names = [spec[0] for spec in source.specs["weights"]]
    finally:
        source.close()
    assert sorted(names) == sorted(before["sections"]["weights"])
    result = translate(_input(before, {"weights": names}), steps=[STEPS[name]])
    assert _renames(result)["weights"] == after["renames"]["weights"]


def test_every_step_has_a_fixture() -> None:
    """Hand-written, or derived from the genuine release files by make_layouts.py (rerun it)."""
    need = {n for n, s in STEPS.items() if s.changes_names or s.changes_metadata}
    assert need - {p.name for p in LAYOUTS.iterdir() if (p / "before.json").exists()} == set()


# ---- the whole chain -----------------------------------------------------------------------------

def test_full_chain_from_pre_011_reaches_newest_layout() -> None:
    before, after = _load("full_chain")
    inp = _input(before)
    result = translate(inp)
    assert _renames(result) == after["renames"]
    assert [a["name"] for a in result.applied] == after["applied"]
    assert [s.name for s in plan(inp)] == after["applied"]
    assert result.anemoi_metadata == after["anemoi_metadata"]
    # 4 processor blocks x 11 tensors, plus one optimizer entry
    assert result.applied[0]["renamed"] == 4 * 11 + 1
    by_name = {a["name"]: a for a in result.applied}
    assert by_name["refactor_mapper"]["moved"] == 2 and by_name["metadata_v2"]["metadata"] is True
    assert all(len(a["digest"]) == 64 for a in result.applied)


def test_full_chain_from_real_torch_file() -> None:
    from anemoi_ckpt.convert.sources import detect

    before, after = _load("full_chain")
    source = detect(LAYOUTS / "full_chain" / "before.pt")
    try:
        names = [spec[0] for spec in source.specs["weights"]]
    finally:
        source.close()
    result = translate(TranslationInput(source.format, {"weights": names}, None))
    assert _renames(result)["weights"] == after["renames"]["weights"]


def test_full_chain_without_version_uses_key_patterns() -> None:
    before, after = _load("full_chain")
    md = copy.deepcopy(before["anemoi_metadata"])
    del md["provenance_training"]
    result = translate(TranslationInput("torch-module", before["sections"], md))
    assert _renames(result) == after["renames"]


NEWEST = sorted({new for m in _load("full_chain")[1]["renames"].values()
                 for sec, new in m.values() if sec == "weights"})


def test_idempotent_on_newest_layout() -> None:
    before, after = _load("full_chain")
    first = translate(_input(before))
    sections: dict[str, list[str]] = {}
    for m in first.renames.values():
        for sec, new in m.values():
            sections.setdefault(sec, []).append(new)
    again = TranslationInput("torch-module", sections, first.anemoi_metadata)
    assert plan(again) == []
    second = translate(again)
    assert second.applied == []
    assert all(old == new for m in second.renames.values() for old, (_, new) in m.items())
    assert second.anemoi_metadata == first.anemoi_metadata


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(NEWEST), unique=True),
       st.sampled_from([None, "0.10.0", "0.16.0", "0.19.0"]))
def test_any_subset_of_newest_layout_is_unchanged(names: list[str], version: str | None) -> None:
    """Including with an old version: a file migrated by ``anemoi-models migration sync`` keeps its
    old provenance version, so a step must also see its old names before it applies."""
    result = translate(TranslationInput("torch-state-dict", {"weights": names}, None, version))
    assert result.applied == []
    assert result.renames == {"weights": {n: ("weights", n) for n in names}}


OLD = sorted(_load("full_chain")[0]["sections"]["weights"])
OLD_PROCESSOR = [n for n in OLD if ".blocks." in n]
OLD_OTHER = [n for n in OLD if ".blocks." not in n]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(OLD_OTHER), unique=True), st.booleans(), st.booleans())
def test_random_old_layout_subsets_map_injectively(names: list[str], processor: bool,
                                                   with_version: bool) -> None:
    # The chunked processor comes whole or not at all: a subset holding one block of each chunk
    # would rightly be refused as disagreeing with num_layers/num_chunks.
    names = names + (OLD_PROCESSOR if processor else [])
    md = {"config": {"model": {"processor": {"num_layers": 4, "num_chunks": 2}}}}
    result = translate(TranslationInput("torch-state-dict", {"weights": names}, md,
                                        "0.10.0" if with_version else None))
    targets = list(result.renames["weights"].values())
    assert len(set(targets)) == len(targets) == len(names)
    # and no old-layout marker survives
    assert not any(re.search(r"\.blocks\.|\.node_dst_mlp\.\d|^(pre|post)_processors\.processors", n)
                   for _, n in targets)


def test_partial_chunk_names_fit_the_config() -> None:
    """An optimizer section may hold only some blocks; the config then gives blocks_per_chunk."""
    md = {"config": {"model": {"processor": {"num_layers": 4, "num_chunks": 2}}}}
    names = ["model.processor.proc.1.blocks.1.mlp.0.weight.exp_avg"]
    result = translate(TranslationInput("torch-state-dict", {"optimizer": names}, md))
    assert result.renames["optimizer"][names[0]] == ("optimizer", "model.processor.proc.3.mlp.0.weight.exp_avg")


def test_pointwise_mlp_processor_is_not_renamed() -> None:
    """A PointWiseMLP processor still names its layers proc.<i>.mlp.<k>. in the newest layout."""
    names = ["model.processor.proc.0.mlp.0.weight", "model.processor.proc.1.mlp.3.bias"]
    result = translate(TranslationInput("torch-state-dict", {"weights": names}, None, "0.15.0"))
    assert result.applied == []


# ---- engine behaviour ----------------------------------------------------------------------------

def test_steps_are_ordered_by_file_prefix() -> None:
    files = [Path(s.file).name for s in load_steps()]
    assert files == sorted(files) and all(re.match(r"^\d{4}-", f) for f in files)


def test_each_step_rechecks_conditions_after_previous_steps() -> None:
    # 0.11.3 layout: mapper trainables only exist after refactor_mapper in older files, so a file
    # with the pre-0.11.3 trainable name must go through refactor_mapper *then* the dataset step.
    names = ["model.encoder.trainable.trainable"]
    steps = [s.name for s in plan(TranslationInput("torch-state-dict", {"weights": names}, None))]
    assert steps == ["refactor_mapper", "move_to_multiple_datasets"]
    # the same name alone without refactor_mapper's result would not trigger the dataset step
    only = translate(TranslationInput("torch-state-dict", {"weights": names}, None),
                     steps=[STEPS["move_to_multiple_datasets"], STEPS["refactor_mapper"]])
    assert [a["name"] for a in only.applied] == ["refactor_mapper"]


def test_version_condition_excludes_newer_files() -> None:
    before, _ = _load("chunking_fix")
    inp = TranslationInput("torch-state-dict", before["sections"], None, "0.11.0")
    assert "chunking_fix" not in [s.name for s in plan(inp)]


def test_version_read_from_metadata_string_or_dict() -> None:
    names = {"weights": ["model.processor.proc.0.attention.lin_q.weight",
                         "model.processor.proc.0.mlp.0.weight"]}
    for entry in ("0.16.1", {"version": "0.16.1", "source": {"url": "x"}}):
        md = {"version": "2.0", "metadata_inference": {"dataset_names": ["data"]},
              "provenance_training": {"module_versions": {"anemoi.models": entry}}}
        assert plan(TranslationInput("torch-state-dict", names, md)) == []
    md["provenance_training"]["module_versions"]["anemoi.models"] = {"version": "0.15.0"}
    assert [s.name for s in plan(TranslationInput("torch-state-dict", names, md))] == \
        ["transformer_processor_mlp"]


def test_collision_is_refused() -> None:
    # Two datasets of a 0.12 model each hold a copy of the hidden node attributes; fusing them
    # would keep one silently, so the engine refuses and names both.
    names = ["model.node_attributes.era.latlons_hidden", "model.node_attributes.cerra.latlons_hidden"]
    with pytest.raises(FormatError, match=r"model\.node_attributes\.latlons_hidden") as e:
        translate(TranslationInput("torch-state-dict", {"weights": names}, None, "0.12.0", "ck.pt"))
    assert "cerra" in str(e.value) and "era" in str(e.value) and e.value.file == "ck.pt"


def test_collision_with_an_unchanged_name_is_refused() -> None:
    names = ["model.encoder.trainable.trainable", "model.encoder_graph_provider.trainable.trainable"]
    with pytest.raises(FormatError, match="refactor_mapper"):
        translate(TranslationInput("torch-state-dict", {"weights": names}, None))


def test_uneven_chunks_are_refused() -> None:
    names = ["model.processor.proc.0.blocks.0.mlp.0.weight", "model.processor.proc.0.blocks.1.mlp.0.weight",
             "model.processor.proc.1.blocks.0.mlp.0.weight"]
    with pytest.raises(FormatError, match="uneven"):
        translate(TranslationInput("torch-state-dict", {"weights": names}, None))


def test_chunks_disagreeing_with_config_are_refused() -> None:
    names = [f"model.processor.proc.{c}.blocks.{j}.mlp.0.weight" for c in range(2) for j in range(2)]
    md = {"config": {"model": {"processor": {"num_layers": 6, "num_chunks": 2}}}}
    with pytest.raises(FormatError, match="num_layers/num_chunks = 3"):
        translate(TranslationInput("torch-state-dict", {"weights": names}, md))


def test_keep_layout_changes_nothing() -> None:
    before, _ = _load("full_chain")
    result = translate(_input(before), keep_layout=True)
    assert result.applied == []
    assert all(new == (sec, old) for sec, m in result.renames.items() for old, new in m.items())
    assert result.anemoi_metadata == before["anemoi_metadata"]
    assert result.anemoi_metadata is not before["anemoi_metadata"]


def test_metadata_is_never_mutated() -> None:
    before, _ = _load("full_chain")
    md = before["anemoi_metadata"]
    pristine = copy.deepcopy(md)
    result = translate(_input(before))
    assert md == pristine
    result.anemoi_metadata["dataset"]["data"]["variables"].append("x")
    assert md == pristine  # the result shares nothing with the input


def test_no_metadata_step_without_metadata() -> None:
    result = translate(TranslationInput("safetensors", {"weights": ["a.b"]}, None))
    assert result.applied == [] and result.anemoi_metadata is None


def test_unversioned_metadata_with_metadata_inference_is_left_alone() -> None:
    md = {"metadata_inference": {"dataset_names": ["data"]}, "dataset": {"data": {}}}
    assert translate(TranslationInput("torch-module", {"weights": []}, md)).anemoi_metadata == md


def test_applied_digest_is_sha256_of_the_file() -> None:
    import hashlib

    step = STEPS["chunking_fix"]
    assert step.digest == hashlib.sha256(Path(step.file).read_bytes()).hexdigest()


# ---- step files ----------------------------------------------------------------------------------

GOOD = b'''name = "x"
description = "d"
[applies_to]
keys_match = '^a\\.'
[[op]]
kind = "rename"
pattern = '^a\\.'
replacement = 'b.'
'''


@pytest.mark.parametrize("text, message", [
    (b"name = ", "not a valid TOML"),
    (GOOD.replace(b'kind = "rename"', b'kind = "explode"'), "unknown op kind 'explode'"),
    (GOOD.replace(b"replacement = 'b.'", b""), "needs 'replacement'"),
    (GOOD.replace(b"pattern = '^a\\.'", b"pattern = '(('"), "invalid regex"),
    (GOOD.replace(b"keys_match = '^a\\.'", b'models_version = "<0.11"'), "needs applies_to.keys_match"),
    (GOOD.replace(b"keys_match", b'models_version = "banana"\nkeys_match'), "not a PEP 440"),
    (GOOD.replace(b'name = "x"\n', b""), "non-empty string 'name'"),
    (b"colour = 1\n" + GOOD, "unknown top-level keys"),
    (GOOD + b"colour = 1\n", "does not take 'colour'"),
])
def test_malformed_step_names_its_file(text: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=re.escape(message)) as e:
        parse_step(text, "translations/0999-bad.toml")
    assert e.value.file == "translations/0999-bad.toml"


def test_good_step_parses() -> None:
    step = parse_step(GOOD, "x.toml")
    assert step.name == "x" and [o.kind for o in step.ops] == ["rename"]


def test_malformed_file_in_folder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "0010-good.toml").write_bytes(GOOD)
    (tmp_path / "0020-bad.toml").write_bytes(GOOD.replace(b"rename", b"nope"))
    with pytest.raises(FormatError) as e:
        load_steps(tmp_path)
    assert e.value.file.endswith("0020-bad.toml")


def test_custom_step_folder(tmp_path: Path) -> None:
    (tmp_path / "0010-good.toml").write_bytes(GOOD)
    result = translate(TranslationInput("torch-state-dict", {"weights": ["a.w", "c.w"]}, None),
                       steps=load_steps(tmp_path))
    assert result.renames["weights"] == {"a.w": ("weights", "b.w"), "c.w": ("weights", "c.w")}


# ---- packaging -----------------------------------------------------------------------------------

def test_checkout_finds_translations_folder() -> None:
    assert translations_dir() == ROOT / "translations"


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    """pyproject lists packages explicitly (to map anemoi_ckpt._translations); a new subpackage
    missing from that list would silently drop out of the wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "anemoi_ckpt").rglob("__init__.py")}
    assert found <= listed and "anemoi_ckpt._translations" in listed


def test_complete_data_indices_as_a_genuine_1_0_file_needs() -> None:
    """1.0 trainers wrote index lists only (anemoi-models <= 0.4 also internal_* copies, before
    target variables no target lists): name_to_index comes from dataset.variables, as
    IndexCollection numbers it; without the variables nothing is guessed."""
    from anemoi_ckpt.translate.metadata_v2 import complete_data_indices

    io = lambda full, f, d, p: {"full": full, "forcing": f, "diagnostic": d, "prognostic": p}  # noqa: E731
    indices = {"data": {"input": io([0, 1, 2], [2], [], [0, 1]), "output": io([0, 1, 3], [], [3], [0, 1])},
               "model": {"input": io([0, 1, 2], [2], [], [0, 1]), "output": io([0, 1, 2], [], [2], [0, 1])}}
    indices["internal_data"] = copy.deepcopy(indices["data"])
    md = {"dataset": {"variables": ["2t", "10u", "lsm", "tp"]}, "data_indices": indices}
    out = complete_data_indices(md)
    assert md["data_indices"] is indices and "internal_data" in indices  # not mutated
    di = out["data_indices"]
    assert set(di) == {"data", "model"}
    assert di["data"]["input"]["name_to_index"] == di["data"]["output"]["name_to_index"] == \
        {"2t": 0, "10u": 1, "lsm": 2, "tp": 3}
    assert di["model"]["input"]["name_to_index"] == {"2t": 0, "10u": 1, "lsm": 2}
    assert di["model"]["output"]["name_to_index"] == {"2t": 0, "10u": 1, "tp": 2}
    assert all(di[p][s]["target"] == [] for p in ("data", "model") for s in ("input", "output"))
    assert complete_data_indices(out) == out
    bare = complete_data_indices({"data_indices": indices})["data_indices"]
    assert "name_to_index" not in bare["data"]["input"] and bare["model"]["output"]["target"] == []
