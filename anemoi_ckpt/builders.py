"""Model builders: how an ``.anc`` names the model its weights belong to, without pickles.

A file's typed metadata holds ``model: {"builder": "<id>", "config": {...}}``. The id is looked up
in :data:`BUILDERS` (the allow-list) and then among the *installed* entry points of the group
``anemoi_ckpt.model_builders``, matched by entry-point name only. Nothing read from a file is ever
used as a module path: an unknown id is a one-line :class:`BuilderError`, never an import. Installing
a package is the trust decision; opening a file is not.

Torch is imported lazily (``import anemoi_ckpt.builders`` stays cheap) and this module never
imports Lightning or PEFT.
"""

from __future__ import annotations

import copy
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import AncError, one_line

if TYPE_CHECKING:
    import torch

    from .reader import Checkpoint
    from .container.schema import ModelSpec

#: Entry point group third-party packages use to add builders (``name = "pkg.module:function"``).
ENTRY_POINT_GROUP = "anemoi_ckpt.model_builders"
#: Attribute a built module carries: the ``{"builder", "config"}`` it was built from.
SPEC_ATTR = "anemoi_ckpt_spec"
#: A builder function with this attribute set builds *from the open file* and loads its weights
#: itself: it is called ``fn(config, checkpoint)``. The anemoi builder is one: an anemoi model's module
#: tree depends on the file's graph, metadata and buffers, not on a config alone.
FROM_CHECKPOINT_ATTR = "builds_from_checkpoint"
#: The builder a file with anemoi metadata and no ``metadata.model`` is built with (entry point of
#: the ``[anemoi]`` extra, :func:`anemoi_ckpt.anemoi.builder.build`).
ANEMOI_BUILDER = "anemoi"

Builder = Callable[[dict], "torch.nn.Module"]


class BuilderError(AncError):
    """No builder of that id, a configuration the builder rejects, or a file without a builder."""


def _reference(config: dict) -> "torch.nn.Module":
    # A thin shim, so that the allow-list names the reference model without importing torch here.
    from .models.reference import build_reference

    return build_reference(config)


#: The allow-list: builder id -> function(config dict) -> nn.Module.
BUILDERS: dict[str, Builder] = {"reference": _reference}


def register_builder(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to the allow-list under ``name`` (code, not files, calls this)."""
    if not isinstance(name, str) or not name:
        raise ValueError("a builder name must be a non-empty string")

    def deco(fn: Builder) -> Builder:
        if name in BUILDERS and BUILDERS[name] is not fn:
            raise ValueError(f"builder {name!r} is already registered")
        BUILDERS[name] = fn
        return fn

    return deco


def known_builders() -> list[str]:
    """Ids resolvable now: the allow-list, then installed entry points (names only, nothing loaded)."""
    names = list(BUILDERS)
    names += sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} - set(names))
    return names


def resolve_builder(name: str) -> Builder:
    """The builder for ``name``: the allow-list first, then the installed entry point of that name.

    Only the *name* is compared; what an entry point loads is chosen by the installed package's
    metadata, never by the checkpoint."""
    if not isinstance(name, str):
        raise BuilderError(None, f"a model builder id must be a string, not {type(name).__name__}")
    if name in BUILDERS:
        return BUILDERS[name]
    matches = {ep.value: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name}
    if len(matches) > 1:
        raise BuilderError(None, f"model builder {name!r} is provided by {len(matches)} installed "
                           f"entry points ({', '.join(sorted(matches))})",
                           "uninstall all but one of the packages providing it")
    if not matches:
        raise BuilderError(None, f"unknown model builder {name[:200]!r}",
                           f"known builders: {', '.join(known_builders()) or 'none'}; a package adds "
                           f"one through the entry point group {ENTRY_POINT_GROUP}")
    ep = next(iter(matches.values()))
    try:
        fn = ep.load()
    except Exception as exc:  # an installed plugin that fails to import: say which one
        raise BuilderError(None, f"model builder {name!r} ({ep.value}) failed to load: "
                           f"{type(exc).__name__}: {exc}") from exc
    if not callable(fn):
        raise BuilderError(None, f"model builder {name!r} ({ep.value}) is not callable")
    return fn


def _as_spec(spec: "ModelSpec | Mapping[str, Any]") -> tuple[str, dict]:
    from pydantic import ValidationError

    from .container.schema import ModelSpec

    if not isinstance(spec, ModelSpec):
        if not isinstance(spec, Mapping):
            raise BuilderError(None, f"a model spec is a mapping {{'builder', 'config'}}, "
                               f"not {type(spec).__name__}")
        try:
            spec = ModelSpec.model_validate(dict(spec))
        except ValidationError as exc:
            raise BuilderError(None, f"invalid model spec: {_pydantic_line(exc)}") from None
    return spec.builder, copy.deepcopy(dict(spec.config))


def _pydantic_line(exc: Any) -> str:
    """A pydantic ValidationError as one line: ``config.chanels: Extra inputs are not permitted``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "config"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return one_line("; ".join(parts))


def builds_from_checkpoint(fn: Builder) -> bool:
    """Whether ``fn`` builds from an open file (and loads its weights) rather than from a config."""
    return bool(getattr(fn, FROM_CHECKPOINT_ATTR, False))


def checkpoint_spec(ck: "Checkpoint") -> dict[str, Any]:
    """The ``{"builder", "config"}`` a file is built with: its ``metadata.model``, else, for a file
    with anemoi metadata, the anemoi builder (the module tree comes from the file itself)."""
    spec = ck.metadata.model
    if spec is not None:
        return spec.model_dump(mode="json")
    if ck.anemoi_metadata:
        return {"builder": ANEMOI_BUILDER, "config": {}}
    raise BuilderError(ck.path, "has no model builder (metadata.model) and no anemoi metadata",
                       "it was saved without metadata={'model': {'builder': ..., 'config': ...}}; "
                       "build the model yourself and use Checkpoint.load_into")


def build_model(spec: "ModelSpec | Mapping[str, Any]", checkpoint: "Checkpoint | None" = None) -> "torch.nn.Module":
    """Build the module ``spec`` names (a :class:`ModelSpec` or ``{"builder", "config"}``).

    Parameters are initialised from torch's global RNG: seed with ``torch.manual_seed`` first for a
    reproducible model. The result carries its spec (see :func:`model_spec`). A builder that builds
    from a file (the anemoi builder) needs ``checkpoint``, and returns the model with its weights."""
    from pydantic import ValidationError

    name, config = _as_spec(spec)
    fn = resolve_builder(name)
    from_file = builds_from_checkpoint(fn)
    if from_file and checkpoint is None:
        raise BuilderError(None, f"model builder {name!r} builds from a checkpoint file, not from a "
                           "config alone", "use model_from_checkpoint(path)")
    try:
        module = fn(copy.deepcopy(config), checkpoint) if from_file else fn(copy.deepcopy(config))
    except ValidationError as exc:
        raise BuilderError(None, f"model builder {name!r}: invalid config: {_pydantic_line(exc)}") from None
    except (TypeError, ValueError) as exc:
        raise BuilderError(None, f"model builder {name!r}: invalid config: {one_line(str(exc))}") from exc
    # A builder may record a resolved config itself (the reference model stores every field, so a
    # later change of a preset cannot change a saved model); otherwise keep what we were given.
    if not isinstance(getattr(module, SPEC_ATTR, None), dict):
        setattr(module, SPEC_ATTR, {"builder": name, "config": config})
    return module


def model_spec(module: "torch.nn.Module") -> dict[str, Any]:
    """The ``{"builder", "config"}`` ``module`` was built from: pass it as ``metadata={"model": ...}``."""
    spec = getattr(module, SPEC_ATTR, None)
    if not isinstance(spec, dict):
        raise BuilderError(None, f"{type(module).__name__} was not built by a model builder "
                           "(it has no anemoi_ckpt_spec)", "build it with anemoi_ckpt.builders.build_model")
    return copy.deepcopy(spec)


def model_from_checkpoint(path_or_ck: "str | os.PathLike | Checkpoint", *,
                          strict: bool = True) -> "torch.nn.Module":
    """Build the model an ``.anc`` names in ``metadata.model`` and load its weights into it."""
    from .reader import Checkpoint, open_checkpoint

    if isinstance(path_or_ck, Checkpoint):
        return _from_open(path_or_ck, strict)
    with open_checkpoint(path_or_ck) as ck:
        return _from_open(ck, strict)


def _from_open(ck: "Checkpoint", strict: bool) -> "torch.nn.Module":
    spec = checkpoint_spec(ck)
    try:
        from_file = builds_from_checkpoint(resolve_builder(spec["builder"]))
        module = build_model(spec, ck)
    except BuilderError as exc:  # name the file the spec came from
        raise BuilderError(ck.path, exc.what, exc.hint) from exc
    if not from_file:  # a file-building builder has loaded the weights (strictly) itself
        ck.load_into(module, strict=strict)
    return module
