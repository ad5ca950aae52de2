"""Loading and validating the declarative step files (``translations/*.toml``) into dataclasses.

A step file is data, not code: its ``[[op]]`` tables name operation kinds from :mod:`.ops`.
Everything that can be wrong in a file (TOML syntax, a missing field, an unknown op kind, a bad
regex or version specifier) is reported as one :class:`~anemoi_ckpt.errors.FormatError` naming
that file, when the steps are loaded, never halfway through a translation.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from ..errors import FormatError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser under its PyPI name
    import tomli as tomllib  # type: ignore[no-redef]
from .ops import OPS, check_params

#: the source formats a step may name in ``applies_to.formats``
# The source formats convert reports (anemoi_ckpt.convert.sources); "anemoi-lightning" is the
# older spelling of "lightning", kept so step files written with it stay valid.
FORMATS = frozenset({"lightning", "anemoi-lightning", "torch-module", "torch-state-dict", "safetensors",
                     "safetensors-sharded", "peft", "anc"})
_FILE_NAME = re.compile(r"^\d{4}-[a-z0-9][a-z0-9-]*\.toml$")
_TOP = {"name", "description", "anemoi_models", "applies_to", "op"}
_APPLIES = {"formats", "models_version", "metadata_version", "keys_match", "keys_absent",
            "meta_present", "meta_absent"}


@dataclass(frozen=True)
class Conditions:
    """All given conditions must hold; see :func:`engine.applies` for the version fallback."""

    formats: frozenset[str] | None = None
    models_version: SpecifierSet | None = None
    metadata_version: SpecifierSet | None = None
    keys_match: tuple[re.Pattern[str], ...] = ()  # each must match at least one name
    keys_absent: tuple[re.Pattern[str], ...] = ()  # none may match any name
    #: dotted paths into the anemoi metadata that must all exist / must all be missing (e.g. an
    #: old config key): a config change is recognised by the config itself, as names are
    meta_present: tuple[str, ...] = ()
    meta_absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class Op:
    kind: str
    params: Mapping[str, Any]  # regex parameters already compiled

    @property
    def target(self) -> str:
        return OPS[self.kind].target


@dataclass(frozen=True)
class Step:
    name: str
    description: str
    anemoi_models: str | None  # the anemoi-models release that made the change (informational)
    applies_to: Conditions
    ops: tuple[Op, ...]
    file: str  # the file it came from (for errors and lineage)
    digest: str  # sha256 of the file bytes

    @property
    def changes_names(self) -> bool:
        return any(op.target == "names" for op in self.ops)

    @property
    def load_ops(self) -> tuple[Op, ...]:
        return tuple(op for op in self.ops if op.target == "load")

    @property
    def changes_metadata(self) -> bool:
        return any(op.target == "metadata" for op in self.ops)


def _regexes(value: Any, field: str, file: str) -> tuple[re.Pattern[str], ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise FormatError(file, f"applies_to.{field} must be a regex or a list of regexes")
    try:
        return tuple(re.compile(v) for v in items)
    except re.error as e:
        raise FormatError(file, f"applies_to.{field}: invalid regex ({e})") from None


def _specifier(value: Any, field: str, file: str) -> SpecifierSet:
    try:
        return SpecifierSet(value)
    except (InvalidSpecifier, TypeError):
        raise FormatError(file, f"applies_to.{field} = {value!r} is not a PEP 440 specifier",
                          'write e.g. "<0.11.0"') from None


def _conditions(raw: Any, file: str) -> Conditions:
    if not isinstance(raw, dict):
        raise FormatError(file, "[applies_to] must be a table")
    unknown = raw.keys() - _APPLIES
    if unknown:
        raise FormatError(file, f"[applies_to] has unknown keys {sorted(unknown)}",
                          f"known: {', '.join(sorted(_APPLIES))}")
    formats = raw.get("formats")
    if formats is not None:
        if not isinstance(formats, list) or not set(formats) <= FORMATS:
            raise FormatError(file, f"applies_to.formats must list some of {sorted(FORMATS)}")
        formats = frozenset(formats)
    return Conditions(
        formats=formats,
        models_version=_specifier(raw["models_version"], "models_version", file)
        if "models_version" in raw else None,
        metadata_version=_specifier(raw["metadata_version"], "metadata_version", file)
        if "metadata_version" in raw else None,
        keys_match=_regexes(raw.get("keys_match", []), "keys_match", file),
        keys_absent=_regexes(raw.get("keys_absent", []), "keys_absent", file),
        meta_present=_paths(raw.get("meta_present", []), "meta_present", file),
        meta_absent=_paths(raw.get("meta_absent", []), "meta_absent", file),
    )


def _paths(value: Any, field: str, file: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise FormatError(file, f"applies_to.{field} must be a dotted path or a list of them")
    return tuple(items)


def _op(raw: Any, index: int, file: str) -> Op:
    where = f"[[op]] #{index + 1}"
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        raise FormatError(file, f"{where} must be a table with a string 'kind'")
    params = {k: v for k, v in raw.items() if k != "kind"}
    spec = OPS.get(raw["kind"])
    for key in (spec.regex_params if spec else frozenset()) & params.keys():
        try:
            params[key] = re.compile(params[key])
        except (re.error, TypeError) as e:
            raise FormatError(file, f"{where} ({raw['kind']}): invalid regex {key!r} ({e})") from None
    problems = check_params(raw["kind"], params)
    if problems:
        raise FormatError(file, f"{where}: " + "; ".join(problems))
    return Op(raw["kind"], MappingProxyType(params))


def parse_step(data: bytes, file: str) -> Step:
    """One step from the bytes of its file; ``file`` labels errors. Pure."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise FormatError(file, f"not a valid TOML step file ({e})") from None
    unknown = raw.keys() - _TOP
    if unknown:
        raise FormatError(file, f"unknown top-level keys {sorted(unknown)}",
                          f"known: {', '.join(sorted(_TOP))}")
    for key in ("name", "description"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise FormatError(file, f"a step needs a non-empty string {key!r}")
    ops_raw = raw.get("op")
    if not isinstance(ops_raw, list) or not ops_raw:
        raise FormatError(file, "a step needs at least one [[op]] table")
    ops = tuple(_op(o, i, file) for i, o in enumerate(ops_raw))
    cond = _conditions(raw.get("applies_to", {}), file)
    # A step that renames tensors must be able to see that the old layout is there: without a
    # keys_match it would apply blindly whenever the version is unknown.
    if any(op.target == "names" for op in ops) and not cond.keys_match:
        raise FormatError(file, "a step with tensor-name ops needs applies_to.keys_match")
    if any(op.target == "metadata" for op in ops) and cond.metadata_version is None \
            and not cond.meta_present and not cond.meta_absent:
        raise FormatError(file, "a step with metadata ops needs applies_to.metadata_version, "
                          "meta_present or meta_absent")
    return Step(raw["name"], raw["description"].strip(), raw.get("anemoi_models"), cond, ops,
                file, hashlib.sha256(data).hexdigest())


def translations_dir() -> Path:
    """Where the step files are: the installed package data, else the source checkout's folder."""
    package = Path(__file__).resolve().parents[1]
    # Wheel: pyproject's package-dir ships translations/ as the data-only anemoi_ckpt._translations.
    if (package / "_translations").is_dir():
        return package / "_translations"
    # Source checkout (editable install): repo root is the parent of the anemoi_ckpt package dir.
    # Only trusted when a pyproject.toml sits beside it, so a stray site-packages/translations
    # folder is never picked up.
    root = package.parent
    if (root / "pyproject.toml").is_file() and (root / "translations").is_dir():
        return root / "translations"
    raise FormatError("translations/", "no translation step files found",
                      "reinstall anemoi-ckpt; the wheel ships them as anemoi_ckpt/_translations")


def load_steps(directory: str | os.PathLike | None = None) -> list[Step]:
    """Every ``NNNN-name.toml`` step in ``directory`` (default: the shipped ones), in file order."""
    folder = Path(directory) if directory is not None else translations_dir()
    files = sorted(p for p in folder.iterdir() if p.suffix == ".toml")
    steps: list[Step] = []
    for path in files:
        if not _FILE_NAME.match(path.name):
            raise FormatError(path, "step files are named NNNN-lowercase-name.toml",
                              "the 4-digit prefix orders the steps")
        steps.append(parse_step(path.read_bytes(), str(path)))
    names = [s.name for s in steps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FormatError(folder, f"step names are not unique: {dupes}")
    return steps
