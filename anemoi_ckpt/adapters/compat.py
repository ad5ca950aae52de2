"""Does a PEFT adapter fit a base model? Names and shapes in, problems out (no I/O, no torch).

PEFT names every adapter tensor after the module it changes, under the wrapper's prefix
(``base_model.model.<module>.lora_A.weight``); the base stores that module's weight as
``<module>.weight``. A LoRA update ``B @ A`` has A's input size equal to the weight's input
dimension and B's output size equal to its output dimension (swapped for ``fan_in_fan_out``
layers, which store the weight transposed), DoRA's magnitude vector has one entry per output
feature, and a ``modules_to_save`` tensor replaces the base tensor of the same name whole.

Used by ``convert --base`` and ``adapters attach`` now, and meant for ``merge``: checking before
reading any tensor lets those commands refuse with one line and write nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Shape = tuple[int, ...]

#: What PeftModel.save_pretrained puts before the wrapped model's own names.
PEFT_PREFIX = "base_model.model."

# LoRA parts, by the segment that follows the module's name in the key.
_A_PARTS = {"lora_A", "lora_embedding_A"}
_B_PARTS = {"lora_B", "lora_embedding_B"}
_MAGNITUDE = "lora_magnitude_vector"
_LORA_PARTS = _A_PARTS | _B_PARTS | {_MAGNITUDE}


@dataclass(frozen=True)
class Problem:
    """One adapter tensor that does not fit: ``key`` in the adapter, ``base`` the base tensor
    it was checked against (None when the base has nothing to compare with)."""

    key: str
    base: str | None
    what: str

    def line(self) -> str:
        against = f" (base tensor {self.base!r})" if self.base else ""
        return f"adapter tensor {self.key!r}{against}: {self.what}"


@dataclass(frozen=True)
class Target:
    """Where an adapter key lands in the base: module, LoRA part (None for a whole-tensor
    replacement), the base tensor it is checked against."""

    module: str
    part: str | None
    base: str


def strip_prefix(key: str) -> str:
    return key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key


def target_of(key: str) -> Target:
    """The base tensor a PEFT adapter key refers to."""
    parts = strip_prefix(key).split(".")
    for i, seg in enumerate(parts):
        if seg in _LORA_PARTS and i > 0:
            module = ".".join(parts[:i])
            # lora_B.bias (lora_bias=True) adds to the layer's bias, everything else to its weight
            tail = parts[i + 1:]
            return Target(module, seg, f"{module}.bias" if tail == ["bias"] else f"{module}.weight")
    name = ".".join(parts)
    return Target(name.rsplit(".", 1)[0], None, name)


def _in_out(shape: Shape, transposed: bool, embedding: bool) -> tuple[int, int] | None:
    """(input size, output size) of a base weight as LoRA sees it; None for a 0-d/1-d tensor."""
    if len(shape) < 2:
        return None
    if embedding:  # nn.Embedding: (num_embeddings, dim); input is the index range
        return shape[0], shape[1]
    return (shape[0], shape[1]) if transposed else (shape[1], shape[0])


def check_adapter(adapter: Mapping[str, Shape], base: Mapping[str, Shape],
                  config: Mapping[str, Any] | None = None) -> list[Problem]:
    """Every problem fitting ``adapter`` (PEFT key -> shape) onto ``base`` (name -> shape), in
    adapter key order; an empty list means it fits. ``config`` is adapter_config.json."""
    transposed = bool((config or {}).get("fan_in_fan_out"))
    problems: list[Problem] = []
    ranks: dict[str, dict[str, tuple[str, int]]] = {}  # module -> "A"/"B" -> (key, rank)
    for key, shape in adapter.items():
        t = target_of(key)
        shape = tuple(shape)
        if t.base not in base:
            problems.append(Problem(key, t.base, "the base has no such tensor"
                                    + (f" (module {t.module!r} missing)" if t.part else "")))
            continue
        bshape = tuple(base[t.base])
        if t.part is None:  # modules_to_save and other whole-tensor replacements
            if shape != bshape:
                problems.append(Problem(key, t.base, f"shape {list(shape)} does not match the base's {list(bshape)}"))
            continue
        if t.base.endswith(".bias"):  # lora_B.bias: one entry per output feature
            if shape != bshape:
                problems.append(Problem(key, t.base, f"bias shape {list(shape)} does not match the base's {list(bshape)}"))
            continue
        io = _in_out(bshape, transposed, t.part.startswith("lora_embedding"))
        if io is None:
            problems.append(Problem(key, t.base, f"the base tensor has shape {list(bshape)}; LoRA needs a matrix"))
            continue
        fan_in, fan_out = io
        if t.part == _MAGNITUDE:
            n = 1
            for d in shape:
                n *= d
            if n != fan_out:
                problems.append(Problem(key, t.base, f"magnitude vector of {n} entries, the base "
                                        f"layer has {fan_out} output features"))
            continue
        if len(shape) < 2:
            problems.append(Problem(key, t.base, f"shape {list(shape)} is not a LoRA factor"))
            continue
        if t.part in _A_PARTS:
            # lora_A.weight is (r, in, ...); lora_embedding_A is (r, num_embeddings)
            if shape[1] != fan_in:
                problems.append(Problem(key, t.base, f"lora_A takes {shape[1]} input features, the "
                                        f"base layer has {fan_in} (base shape {list(bshape)})"))
            ranks.setdefault(t.module, {})["A"] = (key, shape[0])
        else:
            # lora_B.weight is (out, r, ...); lora_embedding_B is (dim, r)
            if shape[0] != fan_out:
                problems.append(Problem(key, t.base, f"lora_B gives {shape[0]} output features, the "
                                        f"base layer has {fan_out} (base shape {list(bshape)})"))
            ranks.setdefault(t.module, {})["B"] = (key, shape[1])
    for module, ab in ranks.items():
        if "A" in ab and "B" in ab and ab["A"][1] != ab["B"][1]:
            problems.append(Problem(ab["B"][0], None, f"rank {ab['B'][1]} differs from "
                                    f"{ab['A'][0]!r}'s rank {ab['A'][1]}"))
    return problems


__all__ = ["PEFT_PREFIX", "Problem", "Target", "check_adapter", "strip_prefix", "target_of"]
