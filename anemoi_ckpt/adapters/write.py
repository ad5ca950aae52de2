"""Writing what a fine-tune of a base ``.anc`` produced: a PEFT LoRA adapter (kind ``adapter``) or
the tensors a freeze run changed (kind ``delta``), in the layouts :mod:`.model` reads and
:func:`.merge.merge` folds back into the base.

- adapter: ``weights`` = ``get_peft_model_state_dict`` (PEFT's keys, adapter name removed, under
  ``base_model.model.``, as ``save_pretrained`` writes adapter_model.safetensors);
  ``metadata.peft_config`` = adapter_config.json as ``save_pretrained`` writes it;
- delta: the tensors whose dtype, shape or bytes differ from the base's, whole, under the base's
  names;
- both: ``metadata.adapter = {name, base_content_id, base_uuid}``, the base as a lineage parent.

Shared by the trainer (``anemoi_ckpt.trainer.outputs``) and tests that make adapters the way it
does, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..errors import FormatError
from ..reader import Checkpoint
from ..writer import Writer


def peft_config_json(peft_model: Any, adapter: str = "default") -> dict[str, Any]:
    """adapter_config.json of ``peft_model``'s adapter, as ``PeftModel.save_pretrained`` makes it."""
    out = peft_model.peft_config[adapter].to_dict()
    for key, value in out.items():
        if isinstance(value, set):  # sorted, so the bytes do not depend on hash order
            out[key] = sorted(value)
    out["inference_mode"] = True  # save_pretrained writes it so
    # Enums (peft_type, task_type) are str subclasses: json turns them into their values.
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def adapter_tensors(peft_model: Any, adapter: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors under the keys ``save_pretrained`` writes."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def changed_tensors(model: torch.nn.Module, base: Checkpoint) -> dict[str, torch.Tensor]:
    """What a freeze fine-tune changed: ``model``'s trained parameters and persistent buffers whose
    dtype, shape or bytes differ from ``base``'s ``weights``. Frozen parameters are not compared:
    they did not train, and a run may hold them in another dtype than the file's (``base_dtype:
    bf16``), which is not a change of the model."""
    bt = base.tensors("weights")
    state = model.state_dict()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()} & set(state)
    out = {}
    for name, t in state.items():
        if name not in trained and name not in buffers:
            continue
        if name in buffers and name not in bt:
            # a buffer the installed anemoi-models derives at load from the file's own tensors (a
            # load-time op): loading the base derives it again, so it is not a change
            continue
        if name not in bt:  # e.g. a model built in another release's layout than the file's
            raise FormatError(base.path, f"the model's tensor {name!r} is not in the base's weights",
                              "fine-tune a base in the installed release's layout")
        ref = bt[name]
        t = t.detach().cpu()
        if t.dtype != ref.dtype or t.shape != ref.shape or not torch.equal(t, ref):
            out[name] = t.contiguous()
    return out


def adapter_info(base: Checkpoint | None, name: str) -> dict[str, Any]:
    """``metadata.adapter``: the adapter's name and the base it must be merged into."""
    return {"name": name, "base_content_id": base.content_id if base else None,
            "base_uuid": base.uuid if base else None}


def write_finetune(path: str | os.PathLike, kind: str, tensors: Mapping[str, torch.Tensor],
                   base: Checkpoint | None, *, name: str | None = None,
                   peft_config: Mapping[str, Any] | None = None, parents: Iterable[Any] = (),
                   operation: str = "finetune", parameters: Mapping[str, Any] | None = None,
                   lineage_info: Mapping[str, Any] | None = None, durable: bool = True) -> str:
    """Write an adapter (``kind="adapter"``, ``peft_config`` required) or delta file at ``path``;
    ``parents`` defaults to the base. Returns the new file's uuid."""
    if kind not in ("adapter", "delta"):
        raise ValueError(f"kind must be adapter or delta, not {kind!r}")
    if (kind == "adapter") != (peft_config is not None):
        raise ValueError("peft_config is required for an adapter and meaningless for a delta")
    name = name or os.path.splitext(os.path.basename(os.fspath(path)))[0]
    md: dict[str, Any] = {"adapter": adapter_info(base, name)}
    if peft_config is not None:
        md["peft_config"] = dict(peft_config)
    parents = list(parents) or ([base] if base is not None else [])
    with Writer(path, kind=kind, metadata=md, parents=parents, operation=operation,  # type: ignore[arg-type]
                parameters=dict(parameters or {}), durable=durable,
                lineage_info=dict(lineage_info or {})) as w:
        w.add_section("weights", dict(tensors))
    return w.uuid


__all__ = ["adapter_info", "adapter_tensors", "changed_tensors", "peft_config_json", "write_finetune"]
