"""The write plan of a conversion: which source tensor goes to which section, under which name
and dtype. Pure functions over names and specs, so the plan is known (and checked) before a
single tensor byte is read, and the dry run reports exactly what a real run would write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..dtypes import nbytes

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

    def order(self, source_sections: list[str]) -> list[str]:
        """Target sections in write order: each source section's own target first, in source
        order; targets fed only by moves (e.g. ``buffers``) after the section that feeds them."""
        seen: list[str] = []
        for src in source_sections:
            for (s, _), (t, _, _) in self.route.items():
                if s == src and t not in seen and (t == src or t not in source_sections):
                    seen.append(t)
        return seen + [t for t in self.targets if t not in seen]


def build_plan(specs: Mapping[str, list[Spec]],
               renames: Mapping[str, Mapping[str, tuple[str, str]]] | None = None,
               cast: str | None = None) -> WritePlan:
    """Route every spec. ``renames`` (from the translation engine) maps per source section
    old name -> (section, name); missing entries keep their place. ``cast`` (a CAST_CODES key)
    applies to floating-point tensors of the ``weights`` section only: optimizer moments and
    graph attributes keep their precision."""
    code = CAST_CODES[cast] if cast else None
    plan = WritePlan()
    taken: dict[tuple[str, str], tuple[str, str]] = {}
    for section, entries in specs.items():
        table = (renames or {}).get(section, {})
        for name, dtype, shape, size in entries:
            target, new = table.get(name, (section, name))
            if (target, new) in taken:
                first = taken[(target, new)]
                raise ValueError(f"{first[0]}/{first[1]} and {section}/{name} would both be "
                                 f"written as {target}/{new}")
            taken[(target, new)] = (section, name)
            to = code if code and target == "weights" and dtype in FLOAT_CODES and dtype != code else None
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
