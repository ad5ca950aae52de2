"""An adapter held in an ``.anc`` written back out as the folder PEFT reads.

``adapter_model.safetensors`` is written the way ``PeftModel.save_pretrained`` writes it
(``safetensors.torch.save_file`` of contiguous tensors under PEFT's key names, metadata
``{"format": "pt"}``) and ``adapter_config.json`` the way ``PeftConfig.save_pretrained`` does
(``json.dumps(cfg, indent=2, sort_keys=True)``), so a folder converted in and exported again is
byte for byte the folder PEFT wrote. Both files are staged in a hidden folder inside ``out_dir``
and moved into place only once both are complete: no half-written adapter is ever visible.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from ..errors import UsageError
from ..reader import Checkpoint, open_checkpoint
from .model import Adapter, read_adapters

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def config_json(config: dict[str, Any]) -> str:
    """adapter_config.json text exactly as PEFT's save_pretrained formats it."""
    return json.dumps(config, indent=2, sort_keys=True)


def pick(adapters: list[Adapter], name: str | None, path: str) -> Adapter:
    """The adapter ``name`` names; without a name, the only one (several: an error listing them)."""
    names = ", ".join(a.name for a in adapters)
    if name is None:
        if len(adapters) == 1:
            return adapters[0]
        if not adapters:
            raise UsageError(path, "holds no adapter", "export an adapter .anc, or a file with "
                             "adapters attached ('anemoi-ckpt adapters list' shows them)")
        raise UsageError(path, f"holds {len(adapters)} adapters ({names})", "pick one with --name")
    for a in adapters:
        if a.name == name:
            return a
    raise UsageError(path, f"no adapter {name!r}", f"adapters: {names or 'none'}")


def _write(ad: Adapter, out_dir: str) -> None:
    import torch
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".export-", dir=out_dir)
    try:
        # Own contiguous copies: the .anc tensors are views of one memory map (save_file refuses
        # shared storage), and aliases would otherwise be written once under two names.
        tensors = {k: v.clone(memory_format=torch.contiguous_format) for k, v in ad.tensors.items()}
        save_file(tensors, os.path.join(stage, WEIGHTS_NAME), metadata={"format": "pt"})
        with open(os.path.join(stage, CONFIG_NAME), "w", encoding="utf-8") as fh:
            fh.write(config_json(ad.config))
        # weights first: PEFT reads the config first, so a config in place means weights are too
        for fname in (WEIGHTS_NAME, CONFIG_NAME):
            os.replace(os.path.join(stage, fname), os.path.join(out_dir, fname))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export_peft(path_or_ck: str | os.PathLike | Checkpoint, out_dir: str | os.PathLike,
                name: str | None = None) -> dict[str, Any]:
    """Write the adapter ``name`` (or the only one) of an ``.anc`` as a PEFT folder that
    ``PeftModel.from_pretrained(model, out_dir)`` loads. Returns what was written."""
    own = not isinstance(path_or_ck, Checkpoint)
    ck = open_checkpoint(path_or_ck) if own else path_or_ck
    try:
        ad = pick(read_adapters(ck), name, ck.path)
        if ad.kind != "lora":
            raise UsageError(ck.path, f"{ad.name!r} is a freeze delta, not a PEFT adapter",
                             "only LoRA-style adapters export to a PEFT folder")
        out = os.fspath(out_dir)
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(out, "exists and is not a folder", "PEFT adapters are folders")
        _write(ad, out)
        return {"name": ad.name, "dir": out, "tensors": len(ad.tensors),
                "files": [WEIGHTS_NAME, CONFIG_NAME], "base_content_id": ad.base_content_id}
    finally:
        if own:
            ck.close()


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "config_json", "export_peft", "pick"]
