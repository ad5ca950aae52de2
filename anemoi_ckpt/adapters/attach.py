"""Several named PEFT adapters inside one model file, unmerged: ``attach``, ``detach``, ``list``.

Both write a new ``.anc`` (the inputs are never modified): every section of the target is
copied unchanged, tensor by tensor from its memory map (memory bounded by the largest tensor),
plus or minus the tensor section ``adapter-<name>`` and its entry in ``metadata.json``
``adapters``. The ``weights`` section is untouched, so the ``content_id`` stays the same: the
file is still the same model, now carrying adapters, and an adapter trained on it still matches.

Output paths: with ``out=None`` attach writes ``<stem>+<name>.anc`` and detach
``<stem>-<name>.anc`` beside the target; such default names never overwrite an existing file
(an explicit ``out`` may, except the inputs themselves).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import FormatError, UsageError
from ..reader import Checkpoint, open_checkpoint
from .compat import check_adapter
from .export import pick
from .model import ATTACHED_PREFIX, Adapter, read_adapters

Shape = tuple[int, ...]


# --- shapes and base checks (shared with convert --base) ----------------------------------------
def section_shapes(ck: Checkpoint, section: str = "weights") -> dict[str, Shape]:
    """name -> shape from the section's header alone (no tensor byte is read)."""
    tm = ck.tensors(section)
    return {n: tuple(tm.entries[tm.aliases.get(n, n)].shape) for n in tm}


def require_fit(adapter_shapes: Mapping[str, Shape], base: Checkpoint, config: Mapping[str, Any],
                adapter_label: str) -> None:
    """Raise one line naming the first adapter key that does not fit ``base`` and its base tensor."""
    problems = check_adapter(adapter_shapes, section_shapes(base), config)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FormatError(adapter_label, f"does not fit base {base.path}: {problems[0].line()}{more}",
                          "was the adapter trained on this base?")


def link_base(kind: str, fmt: str, specs: Iterable[tuple[str, str, Shape, int]],
              metadata: Mapping[str, Any] | None, src: str,
              base: str | os.PathLike | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """For ``convert``: (metadata.json extras, extra lineage parents) of an adapter source,
    with the base checked when ``base`` is given. Other sources pass through unchanged."""
    if kind != "adapter":
        if base is not None:
            raise UsageError(src, f"--base applies to PEFT adapters, this source is a {kind} checkpoint")
        return (dict(metadata) if metadata else None), []
    md = dict(metadata or {})
    folder = src.rstrip("/\\")
    name = os.path.basename(folder if os.path.isdir(folder) else os.path.dirname(folder) or folder)
    if fmt == "anc" and isinstance(md.get("adapter"), dict):
        name = str(md["adapter"].get("name") or name)
    if base is None:
        if fmt == "peft":
            import warnings

            warnings.warn(f"{src}: no --base given: the adapter records no base model, so merging "
                          "or attaching it will require --force", stacklevel=3)
            md["adapter"] = {"name": name, "base_content_id": None, "base_uuid": None}
        return md, []
    config = md.get("peft_config") if isinstance(md.get("peft_config"), dict) else {}
    with open_checkpoint(base) as bck:
        if bck.kind not in ("inference", "training"):
            raise UsageError(os.fspath(base), f"the base is a {bck.kind} file, not a model")
        require_fit({s[0]: tuple(s[2]) for s in specs}, bck, config, src)
        md["adapter"] = {"name": name, "base_content_id": bck.content_id, "base_uuid": bck.uuid}
        parent = {"uuid": bck.uuid, "content_id": bck.content_id, "role": "base"}
    return md, [parent]


# --- copying a file section by section -----------------------------------------------------------
def _copy(ck: Checkpoint, out: str, *, metadata: dict[str, Any], skip: set[str], parents: list[Any],
          operation: str, parameters: dict[str, Any], extra: tuple[str, Mapping[str, Any]] | None = None,
          durable: bool = True) -> tuple[str, str]:
    """Write ``ck`` to ``out`` with the tensor sections in ``skip`` left out and ``extra``
    (section name, tensors) added; returns (uuid, content_id) of the new file."""
    from ..writer import Writer

    md = ck.anemoi_metadata
    with Writer(out, kind=ck.kind, metadata=metadata, anemoi_metadata=md,
                supporting_arrays=ck.supporting_arrays if md else None, parents=parents,
                operation=operation, parameters=parameters, durable=durable,
                keep_anemoi_uuid=True) as w:
        for sec in ck.tensor_sections():
            if sec not in skip:
                tm = ck.tensors(sec)
                stored = sorted(tm.entries.values(), key=lambda e: e.begin)  # the file's own order
                w.begin_section(sec, [(e.name, e.dtype, tuple(e.shape), e.nbytes) for e in stored])
                for e in stored:
                    w.add(e.name, tm[e.name], section=sec)
                for alias, target in tm.aliases.items():
                    w.add_alias(alias, target, section=sec)
        if extra is not None:
            w.add_section(extra[0], {k: v.contiguous() for k, v in extra[1].items()})
        for doc in ck.documents():
            w.add_document(doc, ck.document(doc))
    assert w.content_id is not None
    return w.uuid, w.content_id


def _metadata(ck: Checkpoint) -> dict[str, Any]:
    return ck.metadata.model_dump(mode="json")


def _check_out(out: str, *inputs: str | os.PathLike) -> None:
    from ..convert.anc_source import check_not_same

    for src in inputs:
        check_not_same(os.fspath(src), out)


def _default_out(target: str, sep: str, name: str) -> str:
    stem = os.path.splitext(os.path.basename(target))[0]
    path = os.path.join(os.path.dirname(target), f"{stem}{sep}{name}.anc")
    if os.path.exists(path):  # a name we chose must never destroy a file
        raise UsageError(path, "already exists", "give the output path with -o")
    return path


# --- the operations ------------------------------------------------------------------------------
_VALID = re.compile(r"^[A-Za-z0-9_-]+$")


def attach(target: str | os.PathLike, adapter_file: str | os.PathLike, out: str | os.PathLike | None = None,
           name: str | None = None, *, force: bool = False, durable: bool = True) -> str:
    """Write a copy of ``target`` carrying the adapter of ``adapter_file`` as ``adapter-<name>``;
    returns the output path. ``name`` defaults to the adapter's own name (``--name`` picks one
    when ``adapter_file`` holds several). Refused: a duplicate name, an adapter whose recorded
    base is another model (or none) unless ``force``, and, always, tensors that do not fit."""
    target, adapter_file = os.fspath(target), os.fspath(adapter_file)
    with open_checkpoint(target) as ck, open_checkpoint(adapter_file) as ack:
        if ck.kind not in ("inference", "training"):
            raise UsageError(target, f"adapters attach to a model file, this is a {ck.kind} file")
        # an adapter file's own adapter is renamed by ``name``; in a model file ``name`` picks one
        ad = pick(read_adapters(ack), None if ack.kind == "adapter" else name, adapter_file)
        if ad.kind != "lora":
            raise UsageError(adapter_file, f"{ad.name!r} is a {ad.kind}, only PEFT adapters attach")
        new = name or re.sub(r"[^A-Za-z0-9_-]", "_", ad.name)
        section = f"{ATTACHED_PREFIX}{new}"
        if not _VALID.match(new) or len(section) > 64:
            raise UsageError(adapter_file, f"invalid adapter name {new!r}",
                             "letters, digits, '-' and '_', up to 56 characters")
        md = _metadata(ck)
        attached = dict(md.get("adapters") or {})
        if new in attached or section in ck.tensor_sections():
            raise UsageError(target, f"already has an adapter named {new!r}", "pick another --name")
        if ad.base_content_id != ck.content_id and not force:
            what = (f"records base content id {ad.base_content_id}" if ad.base_content_id
                    else "records no base model")
            raise FormatError(adapter_file, f"{what}; {target} has content id {ck.content_id}",
                              "pass --force to attach it anyway")
        # Shapes are checked even with force: a misfitting adapter cannot be applied at all.
        require_fit(section_shapes(ack, ad.extra.get("section", "weights")), ck, ad.config, adapter_file)
        dst = os.fspath(out) if out is not None else _default_out(target, "+", new)
        _check_out(dst, target, adapter_file)
        attached[new] = {"section": section, "peft_config": ad.config,
                         "base_content_id": ad.base_content_id, "base_uuid": ad.base_uuid}
        md["adapters"] = attached
        params = {"adapter": new, "adapter_source": os.path.basename(adapter_file), "force": force}
        _copy(ck, dst, metadata=md, skip=set(), parents=[ck, ack], operation="attach",
              parameters=params, extra=(section, ad.tensors), durable=durable)
    return dst


def detach(target: str | os.PathLike, name: str, out: str | os.PathLike | None = None, *,
           durable: bool = True) -> str:
    """Write a copy of ``target`` without the attached adapter ``name``; returns the output path."""
    target = os.fspath(target)
    with open_checkpoint(target) as ck:
        md = _metadata(ck)
        attached = dict(md.get("adapters") or {})
        if name not in attached:
            raise UsageError(target, f"no attached adapter {name!r}",
                             f"attached: {', '.join(attached) or 'none'}")
        info = attached.pop(name)
        section = info.get("section") if isinstance(info, dict) else None
        section = section or f"{ATTACHED_PREFIX}{name}"
        if attached:
            md["adapters"] = attached
        else:
            md.pop("adapters", None)
        dst = os.fspath(out) if out is not None else _default_out(target, "-", name)
        _check_out(dst, target)
        _copy(ck, dst, metadata=md, skip={section}, parents=[ck], operation="detach",
              parameters={"adapter": name}, durable=durable)
    return dst


def _describe(ad: Adapter, ck: Checkpoint) -> dict[str, Any]:
    cfg = ad.config
    targets = cfg.get("target_modules")
    tm = ad.tensors
    own = "section" not in ad.extra
    return {"name": ad.name, "kind": ad.kind, "section": ad.extra.get("section", "weights"),
            "peft_type": cfg.get("peft_type"), "r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha"),
            # PEFT also accepts one regex string: it names no count
            "target_modules": len(targets) if isinstance(targets, list) else targets,
            "tensors": len(tm), "bytes": sum(e.nbytes for e in getattr(tm, "entries", {}).values()),
            "base_content_id": ad.base_content_id, "base_uuid": ad.base_uuid,
            # an adapter file's content id is that of the adapter itself: the question is moot
            "matches_file": None if own else ad.base_content_id == ck.content_id}


def list_adapters(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One dict per adapter in ``path`` (its own if it is an adapter/delta file, then attached)."""
    with open_checkpoint(path) as ck:
        return [_describe(ad, ck) for ad in read_adapters(ck)]


__all__ = ["attach", "detach", "link_base", "list_adapters", "require_fit", "section_shapes"]
