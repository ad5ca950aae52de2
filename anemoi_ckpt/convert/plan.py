"""The write plan of a conversion: which source tensor goes to which section, under which name
and dtype. Pure functions over names and specs, so the plan is known (and checked) before a
single tensor byte is read, and the dry run reports exactly what a real run would write.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..container.dtypes import nbytes

Spec = tuple[str, str, tuple[int, ...], int]  # (name, dtype code, shape, nbytes)

#: ``--dtype`` choices -> safetensors dtype code. Only floating-point weights are cast.
CAST_CODES = {"float32": "F32", "fp32": "F32", "float16": "F16", "fp16": "F16",
              "bfloat16": "BF16", "bf16": "BF16", "float64": "F64"}
FLOAT_CODES = {"F64", "F32", "F16", "BF16"}


@dataclass
class WritePlan:
    #: target section -> specs of what it will hold, in write order
    targets: dict[str, list[Spec]] = field(default_factory=dict)
    #: (source section, source name) -> (target section, target name, cast code or None)
    route: dict[tuple[str, str], tuple[str, str, str | None]] = field(default_factory=dict)

    def route_target(self, source_section: str) -> str | None:
        """The section a source section writes into (its tensors not moved elsewhere)."""
        counts: dict[str, int] = {}
        for (s, _), (t, _, _) in self.route.items():
            if s == source_section:
                counts[t] = counts.get(t, 0) + 1
        return max(counts, key=lambda t: counts[t]) if counts else None

    def order(self, source_sections: list[str]) -> list[str]:
        """Target sections in write order: each source section's own target first, in source
        order; targets fed only by moves (e.g. ``buffers``) after the section that feeds them."""
        seen: list[str] = []
        for src in source_sections:
            for (s, _), (t, _, _) in self.route.items():
                if s == src and t not in seen and (t == src or t not in source_sections):
                    seen.append(t)
        return seen + [t for t in self.targets if t not in seen]


#: A conversion writes at most ``OUTPUT_FACTOR`` times its source's size in tensor bytes (after any
#: ``--dtype`` cast; aliases count once), plus ``OUTPUT_SLACK``. Views of one storage are written
#: view by view, so a pickle of many overlapping (or stride-0) views of one storage would otherwise
#: make an output far larger than its source; such a source is refused before the excess is written.
OUTPUT_FACTOR = 4
OUTPUT_SLACK = 16 << 20


def source_size(path: str) -> int:
    """Bytes of the source: the file, or the regular files of a folder source."""
    if os.path.isdir(path):
        total = 0
        for folder, _, files in os.walk(path):
            for name in files:
                full = os.path.join(folder, name)
                if os.path.isfile(full):
                    total += os.path.getsize(full)
        return total
    return os.path.getsize(path) if os.path.isfile(path) else 0


def output_limit(path: str) -> int:
    """The most tensor bytes a conversion of ``path`` may write (``OUTPUT_FACTOR``, ``OUTPUT_SLACK``)."""
    return OUTPUT_FACTOR * source_size(path) + OUTPUT_SLACK


#: What an inference file keeps of a training one: the model, its graph and its buffers.
INFERENCE_SECTIONS = ("weights", "graph", "buffers")


class PlanError(ValueError):
    """A request the sources cannot satisfy; the message is for the user."""


def select_sections(sections: list[str], to: str | None, weights: str = "auto") -> tuple[dict[str, str], str]:
    """Which source sections are written, under which section name, and which weights copy
    (``raw`` or ``ema``) becomes ``weights``. ``to="inference"`` drops optimizer, module,
    hyper-parameter and training-state tensors."""
    has_ema = "weights-ema" in sections
    if weights == "ema" and not has_ema:
        raise PlanError("--weights ema: the source has no weight-averaged (EMA/SWA) copy")
    use = "ema" if weights == "ema" or (weights == "auto" and has_ema and to == "inference") else "raw"
    if "weights" not in sections and not (use == "ema"):
        raise PlanError("the source has no model weights")
    if to != "inference":
        return {s: s for s in sections}, use
    keep = {s: s for s in sections if s in INFERENCE_SECTIONS}
    if use == "ema":
        keep["weights-ema"] = "weights"
        keep.pop("weights", None)
    return keep, use


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def build_plan(specs: Mapping[str, list[Spec]],
               renames: Mapping[str, Mapping[str, tuple[str, str]]] | None = None,
               cast: str | None = None, *, sections: Mapping[str, str] | None = None,
               keep_dtype: Iterable[str] = (), cast_only: Iterable[str] = ()) -> WritePlan:
    """Route every spec. ``renames`` (from the translation engine) maps per source section
    old name -> (section, name); missing entries keep their place. ``sections`` (from
    :func:`select_sections`) says which source sections are written and as what; others are
    dropped. ``cast`` (a CAST_CODES key) applies to floating-point tensors of the ``weights``
    section only (optimizer moments and graph attributes keep their precision), except those
    matching a ``keep_dtype`` glob (norms that must stay fp32); with ``cast_only`` globs, only
    matching tensors are cast, and a match that is not floating point is refused."""
    code = CAST_CODES[cast] if cast else None
    keep_dtype, cast_only = list(keep_dtype), list(cast_only)
    if cast_only and not code:
        raise PlanError("--cast needs --dtype")
    plan = WritePlan()
    taken: dict[tuple[str, str], tuple[str, str]] = {}
    for section, entries in specs.items():
        if sections is not None and section not in sections:
            continue
        out_section = sections[section] if sections is not None else section
        table = (renames or {}).get(section, {})
        for name, dtype, shape, size in entries:
            target, new = table.get(name, (out_section, name))
            if target == section:
                target = out_section
            if (target, new) in taken:
                first = taken[(target, new)]
                raise ValueError(f"{first[0]}/{first[1]} and {section}/{name} would both be "
                                 f"written as {target}/{new}")
            taken[(target, new)] = (section, name)
            to = None
            if code and target == "weights":
                if cast_only and _matches(new, cast_only):
                    if dtype not in FLOAT_CODES:
                        raise PlanError(f"--cast {new}: a {dtype} tensor cannot be cast to {cast}")
                    to = code if dtype != code else None
                elif not cast_only and dtype in FLOAT_CODES and dtype != code \
                        and not _matches(new, keep_dtype):
                    to = code
            out_dtype = to or dtype
            plan.route[(section, name)] = (target, new, to)
            plan.targets.setdefault(target, []).append(
                (new, out_dtype, shape, nbytes(out_dtype, shape) if to else size))
    return plan


def rename_in_document(doc: Any, names: Mapping[str, str]) -> Any:
    """Parameter names inside the training-state document (optimizer param groups and scalar
    state) follow the weights' renames."""
    if not isinstance(doc, dict) or not names:
        return doc
    out = dict(doc)
    opts = []
    for opt in doc.get("optimizers", []):
        opt = dict(opt)
        opt["param_groups"] = [
            {**g, "params": [names.get(p, p) if isinstance(p, str) else p for p in g.get("params", [])]}
            if isinstance(g, dict) else g for g in opt.get("param_groups", [])]
        if isinstance(opt.get("scalar_state"), dict):
            opt["scalar_state"] = {names.get(k, k): v for k, v in opt["scalar_state"].items()}
        opts.append(opt)
    if "optimizers" in doc:
        out["optimizers"] = opts
    return out
