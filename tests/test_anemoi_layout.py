"""Which translation steps a load applies for the installed anemoi-models, and what a mismatch
message says (``anemoi_ckpt.anemoi.layout``: pure functions over names and versions, with the
shipped steps; needs no anemoi package)."""

from __future__ import annotations

import pytest
from packaging.version import Version

from anemoi_ckpt.anemoi.layout import (
    file_models_version,
    first_incompatible,
    mismatch_hint,
    steps_up_to,
    to_installed,
)
from anemoi_ckpt.translate.steps import load_steps

STEPS = load_steps()


def _md(version: str | None) -> dict:
    md: dict = {"version": "2.0", "metadata_inference": {"dataset_names": ["data"]}}
    if version is not None:
        md["provenance_training"] = {"module_versions": {"anemoi.models": {"version": version}}}
    return md


def test_steps_up_to_keeps_only_released_name_steps() -> None:
    names = [s.name for s in steps_up_to(Version("0.12.0"), STEPS)]
    # the three anemoi changes of 0.11.0-0.12.0, in release order, and nothing released later
    assert [n for n in names if n in ("chunking_fix", "refactor_mapper", "move_to_multiple_datasets")] \
        == ["chunking_fix", "refactor_mapper", "move_to_multiple_datasets"]
    assert all(Version(s.anemoi_models) <= Version("0.12.0")
               for s in steps_up_to(Version("0.12.0"), STEPS) if s.anemoi_models)
    everything = [s.name for s in steps_up_to(Version("0.19.0"), STEPS)]
    assert "transformer_processor_mlp" in everything and "metadata_v2" not in everything


@pytest.mark.parametrize(("file", "installed", "expected"), [
    ("0.19.0", "0.15.0", "glu_mlp_implementation"),   # first of the three 0.16.0 steps
    ("0.12.5", "0.11.0", "refactor_mapper"),          # 0.11.3
    ("0.12.5", "0.11.3", "move_to_multiple_datasets"),
    ("0.16.0", "0.16.0", None),                       # the same release
    ("0.19.0", "0.18.0", "multi_encoder_config"),     # the 0.19.0 config change
    ("0.15.0", "0.19.0", None),                       # the file is older: translation's job
    (None, "0.10.0", None),                           # unknown: nothing to say
])
def test_first_incompatible(file, installed, expected) -> None:
    step = first_incompatible(Version(file) if file else None, Version(installed), STEPS)
    assert (step.name if step else None) == expected


def test_file_version_reads_both_provenance_forms() -> None:
    assert file_models_version(_md("0.19.0")) == Version("0.19.0")
    old = {"provenance_training": {"module_versions": {"anemoi.models": "0.12.0"}}}
    assert file_models_version(old) == Version("0.12.0")
    assert file_models_version(_md(None)) is None


def test_to_installed_renames_only_up_to_the_installed_release() -> None:
    old = {"weights": {"model.processor.proc.0.attention.lin_q.weight": "q",
                       "model.processor.proc.0.mlp.0.weight": "w0",
                       "model.processor.proc.0.mlp.2.bias": "b2"}}
    new, applied = to_installed(old, _md("0.15.2"), Version("0.19.0"), "f.anc")
    assert applied == ["transformer_processor_mlp"]
    assert new["weights"] == {"model.processor.proc.0.attention.lin_q.weight": "q",
                              "model.processor.proc.0.mlp.mlp.0.weight": "w0",
                              "model.processor.proc.0.mlp.mlp.2.bias": "b2"}
    # an installed 0.15 expects the old names: nothing is renamed
    same, applied = to_installed(old, _md("0.15.2"), Version("0.15.2"), "f.anc")
    assert applied == [] and same == old


def test_to_installed_moves_between_sections() -> None:
    # refactor_mapper (0.11.3): the mapper's persistent edge_inc became a non-persistent buffer
    old = {"weights": {"model.encoder.trainable.trainable": "t", "model.encoder.edge_inc": "e",
                       "model.encoder.proc.emb_edges.weight": "w"}, "buffers": {}}
    new, applied = to_installed(old, _md("0.11.0"), Version("0.19.0"), "f.anc")
    assert "refactor_mapper" in applied
    moved = {n: v for n, v in new["buffers"].items()}
    assert "e" in moved.values() and "e" not in new["weights"].values()


def test_mismatch_hint_names_the_first_incompatible_release() -> None:
    hint = mismatch_hint(_md("0.19.0"), Version("0.15.0"))
    assert "written by anemoi-models 0.19.0" in hint
    assert "changed in 0.16.0 (glu_mlp_implementation)" in hint
    assert "install anemoi-models>=0.16.0" in hint
    assert "no translation step covers" in mismatch_hint(_md("0.19.0"), Version("0.19.0"))
    assert "an unrecorded anemoi-models" in mismatch_hint(_md(None), Version("0.19.0"))
