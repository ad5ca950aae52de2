"""PEFT adapter key names <-> (module path, part) <-> base tensor names. Pure string functions.

``save_pretrained`` (peft 0.21, checked against real files in tests/test_merge.py) writes, with
the adapter name dropped and everything under ``base_model.model.``:

=====================================================  ====================  ==============
key                                                    part                  shape
=====================================================  ====================  ==============
``<module>.lora_A.weight``                             ``lora_A``            (r, in)
``<module>.lora_B.weight``                             ``lora_B``            (out, r)
``<module>.lora_B.bias`` (``lora_bias=True``)          ``lora_B_bias``       (out,)
``<module>.lora_embedding_A``                          ``embedding_A``       (r, num)
``<module>.lora_embedding_B``                          ``embedding_B``       (dim, r)
``<module>.lora_magnitude_vector`` (DoRA)              ``magnitude``         (out,)
``<name>`` (``modules_to_save``, ``bias="all"``)       ``whole``             base's shape
=====================================================  ====================  ==============

Base ``.anc`` weights are named relative to the model PEFT wrapped, so ``<module>`` is also the
prefix of the base tensor: ``<module>.weight`` (``<module>.bias`` for ``lora_B_bias``), and a
``whole`` key is the base tensor name itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import FormatError

PREFIX = "base_model.model."
WHOLE = "whole"

#: key suffix -> part, longest first so ``lora_B.bias`` is not read as a module named ``...lora_B``
SUFFIXES: dict[str, str] = {
    ".lora_magnitude_vector.weight": "magnitude",  # older PEFT releases
    ".lora_magnitude_vector": "magnitude",
    ".lora_embedding_A": "embedding_A",
    ".lora_embedding_B": "embedding_B",
    ".lora_A.weight": "lora_A",
    ".lora_B.weight": "lora_B",
    ".lora_B.bias": "lora_B_bias",
}


def split_key(key: str, file: str = "") -> tuple[str, str]:
    """``base_model.model.<module>.<part>`` -> (module, part); a key that is no LoRA part is a
    whole tensor: (base tensor name, ``"whole"``)."""
    name = key[len(PREFIX):] if key.startswith(PREFIX) else key
    for suffix, part in SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)], part
    # A LoRA-looking name we do not know (another PEFT method, a newer layout): never treat it
    # as a replacement tensor, which would write adapter parameters into the base.
    if any(seg.startswith(("lora_", "trainable_tokens")) for seg in name.split(".")):
        raise FormatError(file, f"adapter tensor {key!r} is not a LoRA part this merge knows")
    return name, WHOLE


def base_tensor_name(module: str, part: str = "lora_A") -> str:
    """The base tensor a part changes: the module's bias for ``lora_B_bias``, else its weight."""
    if part == WHOLE:
        return module
    return f"{module}.bias" if part == "lora_B_bias" else f"{module}.weight"


@dataclass
class ModuleKeys:
    """The PEFT keys of one adapted module, by part."""

    module: str
    parts: dict[str, str] = field(default_factory=dict)

    @property
    def embedding(self) -> bool:
        return "embedding_A" in self.parts or "embedding_B" in self.parts


def group_keys(keys: Iterable[str], file: str = "") -> tuple[dict[str, ModuleKeys], dict[str, str]]:
    """PEFT keys -> ({module: ModuleKeys}, {base tensor name: key} for whole tensors).
    Refuses a module with only one of A/B, or with both linear and embedding parts."""
    modules: dict[str, ModuleKeys] = {}
    whole: dict[str, str] = {}
    for key in keys:
        module, part = split_key(key, file)
        if part == WHOLE:
            whole[module] = key
            continue
        mk = modules.setdefault(module, ModuleKeys(module))
        if part in mk.parts:
            raise FormatError(file, f"adapter tensors {mk.parts[part]!r} and {key!r} are the same part")
        mk.parts[part] = key
    for mk in modules.values():
        pair = ("embedding_A", "embedding_B") if mk.embedding else ("lora_A", "lora_B")
        missing = [p for p in pair if p not in mk.parts]
        if missing or (mk.embedding and ("lora_A" in mk.parts or "lora_B" in mk.parts)):
            raise FormatError(file, f"module {mk.module!r}: incomplete LoRA pair "
                              f"(has {', '.join(sorted(mk.parts))})")
    return modules, whole
