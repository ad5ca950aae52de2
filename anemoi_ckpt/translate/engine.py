"""Planning and applying translation steps to a checkpoint's tensor names and anemoi metadata.

The engine only ever sees names: it returns, for every input name, where that tensor goes
(section and name). Moving the bytes is the caller's job, so a translation costs nothing per
tensor and can be planned (``--dry-run``) without reading a tensor.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

from ..errors import FormatError
from .ops import OPS, Context, OpError, lookup
from .steps import Step, load_steps

Key = tuple[str, str]  # (section, name)


@dataclass(frozen=True)
class TranslationInput:
    source_format: str
    #: tensor names per section ("weights", "buffers", "optimizer", "graph", ...), interface level
    #: (no Lightning ``model.`` prefix); optimizer names are ``<parameter name>.<state key>``
    sections: Mapping[str, Sequence[str]]
    anemoi_metadata: Mapping[str, Any] | None
    #: the anemoi-models version that wrote the tensors; None: read it from the metadata
    models_version: str | None = None
    #: what errors name (the source path, when the caller has one)
    label: str = "<checkpoint>"


@dataclass
class TranslationResult:
    #: per source section: old name -> (new section, new name), for every name (identity included)
    renames: dict[str, dict[str, tuple[str, str]]]
    anemoi_metadata: dict[str, Any] | None
    #: [{"name", "digest", "renamed", "moved", "metadata"}] for each step applied, in order
    applied: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def recorded_version(md: Mapping[str, Any] | None, module: str) -> str | None:
    """A module's version from ``provenance_training.module_versions``, whose entry was a string
    and is ``{"version": ..., "source": ...}`` since anemoi-utils#268."""
    versions = ((md or {}).get("provenance_training") or {}).get("module_versions") \
        if isinstance(md, Mapping) else None
    raw = versions.get(module) if isinstance(versions, Mapping) else None
    raw = raw.get("version") if isinstance(raw, Mapping) else raw
    return raw if isinstance(raw, str) else None


def models_version_of(inp: TranslationInput) -> Version | None:
    """The anemoi-models version: given, else the one the metadata records."""
    raw: Any = inp.models_version
    if raw is None:
        raw = recorded_version(inp.anemoi_metadata, "anemoi.models")
    if not isinstance(raw, str):
        return None
    try:
        return Version(raw)
    except InvalidVersion:
        return None


def metadata_version_of(md: Mapping[str, Any] | None) -> Version | None:
    """``version`` of anemoi metadata; unversioned files are 2.0 if they carry the multi-dataset
    ``metadata_inference``, else 1.0 (the trimmed ``single-o48-1.1`` fixtures lack the field)."""
    if not isinstance(md, Mapping):
        return None
    raw = md.get("version")
    if raw is None:
        raw = "2.0" if "metadata_inference" in md else "1.0"
    try:
        return Version(str(raw))
    except InvalidVersion:
        return None


def applies(step: Step, source_format: str, names: Mapping[str, Sequence[str]],
            models_version: Version | None, md: Mapping[str, Any] | None) -> bool:
    """Whether every condition of ``step`` holds for this state. Pure.

    A ``models_version`` condition is skipped when no version is known: ``keys_match`` (required
    of every tensor step) then decides alone. It is never the only evidence, because a file
    migrated by ``anemoi-models migration sync`` keeps the old version in its provenance."""
    c = step.applies_to
    if c.formats is not None and source_format not in c.formats:
        return False
    if c.models_version is not None and models_version is not None \
            and not c.models_version.contains(models_version, prereleases=True):
        return False
    if c.metadata_version is not None:
        mv = metadata_version_of(md)
        if mv is None or not c.metadata_version.contains(mv, prereleases=True):
            return False
    if not all(lookup(md, p)[0] for p in c.meta_present):
        return False
    if any(lookup(md, p)[0] for p in c.meta_absent):
        return False
    flat = [n for sec in names.values() for n in sec]
    if not all(any(p.search(n) for n in flat) for p in c.keys_match):
        return False
    return not any(p.search(n) for p in c.keys_absent for n in flat)


def _apply_names(step: Step, state: dict[Key, Key], md: Mapping[str, Any] | None,
                 label: str) -> tuple[dict[Key, Key], int, int]:
    """``state`` (original key -> current key) after the step's name ops; counts renamed/moved."""
    renamed = moved = 0
    for op in (o for o in step.ops if o.target == "names"):
        current: dict[str, list[str]] = {}
        for sec, name in state.values():
            current.setdefault(sec, []).append(name)
        try:
            changes = OPS[op.kind].fn(current, op.params, Context(md, label))
        except OpError as e:
            raise FormatError(label, f"translation step {step.name!r}: {e}") from None
        if not changes:
            continue
        new_state = {orig: changes.get(cur, cur) for orig, cur in state.items()}
        _refuse_collisions(step, new_state, label)
        for old, new in changes.items():
            renamed += old[1] != new[1]
            moved += old[0] != new[0]
        state = new_state
    return state, renamed, moved


def _refuse_collisions(step: Step, state: Mapping[Key, Key], label: str) -> None:
    seen: dict[Key, Key] = {}
    for orig, new in state.items():
        if new in seen:
            a, b = sorted([seen[new], orig])
            raise FormatError(label, f"translation step {step.name!r} would map both "
                              f"{a[0]}:{a[1]} and {b[0]}:{b[1]} to {new[0]}:{new[1]}",
                              "nothing is overwritten; translate with keep_layout to keep the old names")
        seen[new] = orig


#: The oldest anemoi-models whose files the shipped steps are proven on (anemoi-training 0.2.2,
#: docs/compatibility.md). Older layouts are refused rather than half translated.
OLDEST_COVERED = Version("0.3.0")


def refuse_uncovered(inp: TranslationInput) -> None:
    """Conversion's guard: a file older than every covered release is refused in one line rather
    than half translated. Not part of the engine itself: planning, and loading a file kept in its
    own layout (``--keep-layout``) in its own anemoi-models release, must still work."""
    version = models_version_of(inp)
    if version is None or version >= OLDEST_COVERED:
        return
    training = recorded_version(inp.anemoi_metadata, "anemoi.training")
    names = [n for sec in inp.sections.values() for n in sec][:3]
    raise FormatError(inp.label, f"written by anemoi-training {training or '(unrecorded)'} with "
                      f"anemoi-models {version}, older than any release the translation steps "
                      f"cover (anemoi-models {OLDEST_COVERED}); its names ({', '.join(names)}, ...) "
                      "are explained by no step",
                      "convert with --keep-layout to keep the layout as it is (it then loads only in "
                      "that anemoi-models release); covered releases: docs/compatibility.md")


def _run(inp: TranslationInput, steps: Sequence[Step] | None) -> tuple[list[Step], dict[Key, Key], dict[str, Any] | None, list[dict]]:
    steps = load_steps() if steps is None else steps
    version = models_version_of(inp)
    state: dict[Key, Key] = {(sec, n): (sec, n) for sec, names in inp.sections.items() for n in names}
    if len(state) != sum(len(v) for v in inp.sections.values()):
        raise FormatError(inp.label, "a section lists the same tensor name twice")
    md = copy.deepcopy(dict(inp.anemoi_metadata)) if inp.anemoi_metadata is not None else None
    chosen: list[Step] = []
    applied: list[dict[str, Any]] = []
    for step in steps:
        if not (step.changes_names or step.changes_metadata):
            continue  # load-time ops only: run by anemoi_ckpt.anemoi at load, not here
        names: dict[str, list[str]] = {}
        for sec, name in state.values():
            names.setdefault(sec, []).append(name)
        if not applies(step, inp.source_format, names, version, md):
            continue
        chosen.append(step)
        # Planning must also run each step, since later steps' conditions see its result.
        state, renamed, moved = _apply_names(step, state, md, inp.label)
        before = md
        for op in (o for o in step.ops if o.target == "metadata"):
            if md is not None:
                try:
                    md = OPS[op.kind].fn(md, op.params)
                except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                    # a metadata document the step cannot read (crafted or truncated): one line
                    raise FormatError(inp.label, f"translation step {step.name!r} cannot read the "
                                      f"anemoi metadata ({type(e).__name__}: {e})") from None
        applied.append({"name": step.name, "digest": step.digest, "renamed": renamed,
                        "moved": moved, "metadata": md != before})
    return chosen, state, md, applied


def plan(inp: TranslationInput, steps: Sequence[Step] | None = None) -> list[Step]:
    """The steps that apply, in order, each checked against the state the previous ones leave."""
    return _run(inp, steps)[0]


def translate(inp: TranslationInput, keep_layout: bool = False,
              steps: Sequence[Step] | None = None) -> TranslationResult:
    """Bring ``inp`` to the newest anemoi-models layout (and metadata version).

    ``keep_layout=True`` keeps everything as it is (identity renames, metadata copied unchanged):
    the file then still loads in the anemoi version that wrote it, and old anemoi-inference
    releases read its 1.0 metadata, which the 2.0 form would break. ``steps`` replaces the
    shipped steps (tests, or a caller with its own folder via :func:`load_steps`)."""
    if keep_layout:
        md = copy.deepcopy(dict(inp.anemoi_metadata)) if inp.anemoi_metadata is not None else None
        renames = {sec: {n: (sec, n) for n in names} for sec, names in inp.sections.items()}
        return TranslationResult(renames, md, [])
    _, state, md, applied = _run(inp, steps)
    renames: dict[str, dict[str, tuple[str, str]]] = {sec: {} for sec in inp.sections}
    for (sec, name), new in state.items():
        renames[sec][name] = new
    return TranslationResult(renames, md, applied)
