"""The file's tensor layout against the installed anemoi-models: translate, or say what is needed.

A file keeps the layout of the anemoi-models that wrote it when it was converted with
``--keep-layout`` (or written by another tool). At load, the shipped translation steps
(``translations/``) bring it forward, but only the steps whose ``anemoi_models`` release the
installed anemoi-models has reached: a step made for 0.16 would break a model built by 0.15. When
the names still do not fit, the message says which anemoi-models release first changed the layout
between the installed one and the file's (the first incompatible version), so the fix is one
``pip install`` away. Pure functions over names and versions; tensors are only re-keyed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from packaging.version import InvalidVersion, Version

from ..errors import FormatError
from ..translate.engine import TranslationInput, models_version_of, plan, recorded_version, translate
from ..translate.steps import Step, load_steps


def _release(step: Step) -> Version | None:
    try:
        return Version(step.anemoi_models) if step.anemoi_models else None
    except InvalidVersion:
        return None


def steps_up_to(installed: Version, steps: Sequence[Step], *, load_ops: bool = False) -> list[Step]:
    """The name-changing steps (or, with ``load_ops``, the steps with load-time operations) a
    model built by ``installed`` expects to have been applied."""
    out = []
    for step in steps:
        release = _release(step)
        wanted = bool(step.load_ops) if load_ops else step.changes_names
        if wanted and (release is None or release <= installed):
            out.append(step)
    return out


def first_incompatible(file_version: Version | None, installed: Version,
                       steps: Sequence[Step]) -> Step | None:
    """The earliest step released after ``installed`` and up to ``file_version``: the layout change
    the installed anemoi-models does not know. None when the file is not newer, or no step lies
    between the two."""
    if file_version is None or file_version <= installed:
        return None
    later = [s for s in steps if (r := _release(s)) is not None and installed < r <= file_version]
    return min(later, key=lambda s: _release(s), default=None)  # type: ignore[arg-type, return-value]


def file_models_version(md: Mapping[str, Any] | None) -> Version | None:
    """The anemoi-models version recorded in the anemoi metadata (``provenance_training``)."""
    return models_version_of(TranslationInput("anc", {}, md))


def to_installed(sections: Mapping[str, Mapping[str, Any]], md: Mapping[str, Any] | None,
                 installed: Version, label: str,
                 steps: Sequence[Step] | None = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``sections`` (section -> name -> tensor) re-keyed by the steps up to ``installed``; also the
    names of the steps applied. A step may move a tensor between sections (e.g. ``edge_inc`` to
    ``buffers``)."""
    steps = steps_up_to(installed, load_steps() if steps is None else steps)
    inp = TranslationInput("anc", {sec: list(t) for sec, t in sections.items()}, md, label=label)
    result = translate(inp, steps=steps)
    out: dict[str, dict[str, Any]] = {sec: {} for sec in sections}
    for sec, renames in result.renames.items():
        for old, (new_sec, new) in renames.items():
            out.setdefault(new_sec, {})[new] = sections[sec][old]
    return out, [a["name"] for a in result.applied]


def mismatch_hint(md: Mapping[str, Any] | None, installed: Version,
                  steps: Sequence[Step] | None = None) -> str:
    """What to do when the names do not fit the installed anemoi-models."""
    file_version = file_models_version(md)
    steps = load_steps() if steps is None else steps
    step = first_incompatible(file_version, installed, steps)
    if step is not None:
        return (f"the file was written by anemoi-models {file_version}; its layout changed in "
                f"{step.anemoi_models} ({step.name}), after the installed {installed}: install "
                f"anemoi-models>={step.anemoi_models}")
    written = f"anemoi-models {file_version}" if file_version else "an unrecorded anemoi-models"
    training = recorded_version(md, "anemoi.training")
    if training:
        written = f"anemoi-training {training} with {written}"
    if md is not None and _metadata_steps_apply(md, steps):
        # steps exist for this metadata: the file kept its old layout (convert --keep-layout)
        return (f"the file keeps the layout and config of {written} (converted with --keep-layout?): "
                "'anemoi-ckpt convert FILE NEW.anc' brings them forward")
    return (f"the file was written by {written}, the installed one is {installed}, and no "
            "translation step covers the difference (releases covered: docs/compatibility.md)")


def _metadata_steps_apply(md: Mapping[str, Any], steps: Sequence[Step]) -> bool:
    try:
        return any(s.changes_metadata for s in plan(TranslationInput("anc", {}, md), steps))
    except FormatError:  # older than any covered release: the plain message applies
        return False
