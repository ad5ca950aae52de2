"""What a finished run writes: an adapter (lora), a delta (freeze) or a full model (full, pretrain).

- ``lora`` -> kind ``adapter``: ``weights`` = ``get_peft_model_state_dict`` (PEFT's keys, adapter
  name removed, under ``base_model.model.``, as ``save_pretrained`` writes adapter_model.safetensors);
  ``metadata.peft_config`` = the ``LoraConfig`` as ``save_pretrained`` writes adapter_config.json
  (``to_dict()``, sets as lists - sorted here, so the bytes do not depend on hash order -
  ``inference_mode`` true); ``metadata.adapter = {name, base_content_id, base_uuid}``;
- ``freeze`` -> kind ``delta``: the tensors whose bytes differ from the base's, whole, under the
  base's names, with the same ``metadata.adapter``;
- ``full``/pretrain -> kind ``inference``: every tensor, ``metadata.model`` = the builder spec.

All three are what :func:`anemoi_ckpt.adapters.merge.merge` and ``model_from_checkpoint`` read.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import torch

from ..writer import Writer

if TYPE_CHECKING:
    from .run import Prepared


def peft_config_json(peft_model: Any, adapter: str = "default") -> dict[str, Any]:
    """adapter_config.json of ``peft_model``'s adapter, as ``PeftModel.save_pretrained`` makes it."""
    cfg = peft_model.peft_config[adapter]
    out = cfg.to_dict()
    for key, value in out.items():
        if isinstance(value, set):
            out[key] = sorted(value)
    out["inference_mode"] = True  # save_pretrained writes it so
    # Enums (peft_type, task_type) are str subclasses: json turns them into their values.
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def base_info(prep: "Prepared", name: str) -> dict[str, Any]:
    b = prep.base
    return {"name": name, "base_content_id": b.content_id if b else None, "base_uuid": b.uuid if b else None}


def training_metadata(prep: "Prepared", model: torch.nn.Module) -> dict[str, Any]:
    """metadata.json of the training files: what resuming checks and rebuilds from."""
    cfg = prep.cfg
    info: dict[str, Any] = {"method": cfg.method, "model": prep.spec, "config": cfg.to_json(),
                            "config_digest": cfg.digest(), **{k: v for k, v in base_info(prep, cfg.run_name).items()
                                                              if k != "name"}}
    md: dict[str, Any] = {"training": info}
    if cfg.method == "lora":
        # The weights are the PEFT-wrapped model's: metadata.model would build a model they do not fit.
        info["peft_config"] = peft_config_json(model)
    else:
        md["model"] = prep.spec
    return md


def _changed(model: torch.nn.Module, base: Any) -> dict[str, torch.Tensor]:
    """The trained tensors (and persistent buffers) whose bytes differ from the base's. Frozen
    parameters are not compared: they did not train, and under ``base_dtype: bf16`` they are held
    in another dtype than the file's, which is not a change of the model."""
    bt = base.tensors("weights")
    state = model.state_dict()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()} & set(state)
    out = {}
    for name, t in state.items():
        if name not in trained and name not in buffers:
            continue
        ref = bt[name]
        t = t.detach().cpu()
        if t.dtype != ref.dtype or t.shape != ref.shape or not torch.equal(t, ref):
            out[name] = t.contiguous()
    return out


def write_output(prep: "Prepared", model: torch.nn.Module, path: str, operation: str,
                 lineage: dict[str, Any], *, durable: bool = True) -> str:
    """Write the run's result at ``path``; returns its kind."""
    cfg = prep.cfg
    name = os.path.splitext(os.path.basename(path))[0]
    parents = [c for c in (prep.base, prep.resume) if c is not None]
    if cfg.method == "lora":
        from peft import get_peft_model_state_dict

        tensors = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        kind, md = "adapter", {"adapter": base_info(prep, name), "peft_config": peft_config_json(model)}
    elif cfg.method == "freeze":
        assert prep.base is not None
        tensors = _changed(model, prep.base)
        kind, md = "delta", {"adapter": base_info(prep, name)}
    else:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        kind, md = "inference", {"model": prep.spec}
    params = {**lineage, "changed_tensors": len(tensors)} if kind == "delta" else lineage
    with Writer(path, kind=kind, metadata=md, parents=parents, operation=operation,  # type: ignore[arg-type]
                parameters=params, durable=durable,
                lineage_info={"config_digest": lineage.get("config_digest"),
                              "dataset": json.dumps(lineage.get("dataset"), sort_keys=True)}) as w:
        w.add_section("weights", tensors)
    return kind
