"""Adapters as the rest of the package sees them, whatever file they came from.

Three layouts hold adapters:

- an ``.anc`` of kind ``adapter``: one PEFT adapter, its tensors in ``weights`` under PEFT's own
  key names (``base_model.model.<module>.lora_A.weight``), ``adapter_config.json`` verbatim in
  ``metadata.json`` under ``peft_config`` and the base it was trained on under
  ``adapter = {"name", "base_content_id", "base_uuid"}``;
- any ``.anc`` with adapters attached unmerged: tensor section ``adapter-<name>`` per adapter,
  and ``metadata.json`` ``adapters = {name: {"section", "peft_config", "base_content_id",
  "base_uuid"}}``;
- an ``.anc`` of kind ``delta``: the tensors a freeze fine-tune changed, under the base's names,
  whole (they replace the base's), with ``adapter = {"name", "base_content_id", "base_uuid"}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError
from ..reader import Checkpoint, open_checkpoint

ATTACHED_PREFIX = "adapter-"


@dataclass
class Adapter:
    name: str
    #: "lora" (PEFT config in ``config``) or "delta" (whole replacement tensors)
    kind: str
    #: adapter_config.json, verbatim, for kind "lora"; {} for a delta
    config: dict[str, Any]
    #: PEFT key (lora) or base tensor name (delta) -> tensor (lazy, zero-copy)
    tensors: Mapping[str, Any]
    base_content_id: str | None = None
    base_uuid: str | None = None
    #: where it came from, for messages and lineage: (path, uuid, content_id of that file)
    source: tuple[str, str, str] = ("", "", "")
    extra: dict[str, Any] = field(default_factory=dict)


def _info(md: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = md.get(key)
    return value if isinstance(value, dict) else {}


def read_adapters(ck: Checkpoint) -> list[Adapter]:
    """Every adapter ``ck`` holds (its own weights if kind adapter/delta, then attached ones).
    The tensors stay views into ``ck``: keep it open while they are used."""
    md = ck.metadata.model_extra or {}
    src = (ck.path, ck.uuid, ck.content_id)
    out: list[Adapter] = []
    own = _info(md, "adapter")
    default_name = os.path.splitext(os.path.basename(ck.path))[0]
    if ck.kind == "adapter":
        cfg = md.get("peft_config")
        if not isinstance(cfg, dict):
            raise FormatError(ck.path, "an adapter file without peft_config in metadata.json")
        out.append(Adapter(str(own.get("name") or default_name), "lora", cfg, ck.tensors("weights"),
                           own.get("base_content_id"), own.get("base_uuid"), src))
    elif ck.kind == "delta":
        out.append(Adapter(str(own.get("name") or default_name), "delta", {}, ck.tensors("weights"),
                           own.get("base_content_id"), own.get("base_uuid"), src))
    for name, info in _info(md, "adapters").items():
        if not isinstance(info, dict) or not isinstance(info.get("peft_config"), dict):
            raise FormatError(ck.path, f"attached adapter {name!r} has no peft_config",
                              section="metadata.json")
        section = info.get("section") or f"{ATTACHED_PREFIX}{name}"
        out.append(Adapter(name, "lora", info["peft_config"], ck.tensors(section),
                           info.get("base_content_id"), info.get("base_uuid"), src,
                           extra={"section": section}))
    return out


def open_adapters(path: str | os.PathLike) -> tuple[Checkpoint, list[Adapter]]:
    """Open ``path`` and read its adapters; the caller closes the checkpoint."""
    ck = open_checkpoint(path)
    try:
        adapters = read_adapters(ck)
    except BaseException:
        ck.close()
        raise
    if not adapters:
        ck.close()
        raise FormatError(os.fspath(path), f"holds no adapter (kind {ck.kind}, nothing attached)",
                          "convert a PEFT folder with 'anemoi-ckpt convert DIR lora.anc --base BASE'")
    return ck, adapters
