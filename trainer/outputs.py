"""What a finished run writes: an adapter (lora), a delta (freeze) or a full model (full, pretrain).

- ``lora`` -> kind ``adapter``: ``weights`` = ``get_peft_model_state_dict`` (PEFT's keys, adapter
  name removed, under ``base_model.model.``, as ``save_pretrained`` writes adapter_model.safetensors);
  ``metadata.peft_config`` = the ``LoraConfig`` as ``save_pretrained`` writes adapter_config.json
  (``to_dict()``, sets as lists - sorted here, so the bytes do not depend on hash order -
  ``inference_mode`` true); ``metadata.adapter = {name, base_content_id, base_uuid}``;
- ``freeze`` -> kind ``delta``: the tensors whose bytes differ from the base's, whole, under the
  base's names, with the same ``metadata.adapter``;
- ``full``/pretrain -> kind ``inference``: every tensor, ``metadata.model`` = the builder spec; of
  an anemoi base, a complete anemoi inference file as a merge writes one (graph/buffers, supporting
  arrays, the anemoi metadata forked with a new uuid and the base as parent).

All three are what :func:`anemoi_ckpt.adapters.merge.merge` and ``model_from_checkpoint`` read.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import torch

from ..adapters.write import adapter_info, adapter_tensors, changed_tensors, peft_config_json
from ..errors import FormatError
from ..writer import Writer

if TYPE_CHECKING:
    from .run import Prepared


def base_info(prep: "Prepared", name: str) -> dict[str, Any]:
    return adapter_info(prep.base, name)


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


def _lineage_info(lineage: dict[str, Any]) -> dict[str, Any]:
    return {"config_digest": lineage.get("config_digest"),
            "dataset": json.dumps(lineage.get("dataset"), sort_keys=True)}


def _write_anemoi_full(prep: "Prepared", model: torch.nn.Module, path: str, operation: str,
                       lineage: dict[str, Any], durable: bool) -> None:
    """A full fine-tune of an anemoi base: a complete anemoi inference file, as a merge writes one -
    every tensor of the base's ``weights`` from the trained model, the base's graph/buffers sections,
    supporting arrays, and its anemoi metadata forked (new uuid and run id, the base as parent)."""
    import uuid as uuidlib

    from ..adapters.merge import KEPT_SECTIONS
    from ..anemoi_meta import derived

    base = prep.base
    assert base is not None
    bt = base.tensors("weights")
    state = model.state_dict()
    missing = [n for n in bt if n not in state]
    if missing:
        raise FormatError(base.path, f"{len(missing)} tensor(s) of the base are not in the trained model "
                          f"(first: {missing[0]})", "fine-tune a base in the installed release's layout")
    # Only the base's names: a buffer the installed anemoi-models derives at load (not in the file)
    # is derived again when the output is loaded.
    tensors = {n: state[n].detach().cpu().contiguous() for n in bt}
    extra = {k: v for k, v in base.metadata.model_dump(mode="json").items()
             if k not in ("schema_version", "adapter", "adapters", "peft_config", "training")}
    md = derived(base.anemoi_metadata, str(uuidlib.uuid4()))
    parents = [c for c in (prep.base, prep.resume) if c is not None]
    with Writer(path, kind="inference", metadata=extra, anemoi_metadata=md,
                supporting_arrays=base.supporting_arrays, parents=parents, operation=operation,
                parameters=lineage, durable=durable, lineage_info=_lineage_info(lineage)) as w:
        w.add_section("weights", tensors)
        for sec in KEPT_SECTIONS:
            if sec in base.tensor_sections():
                w.add_section(sec, base.tensors(sec))


def write_output(prep: "Prepared", model: torch.nn.Module, path: str, operation: str,
                 lineage: dict[str, Any], *, durable: bool = True) -> str:
    """Write the run's result at ``path``; returns its kind."""
    cfg = prep.cfg
    name = os.path.splitext(os.path.basename(path))[0]
    parents = [c for c in (prep.base, prep.resume) if c is not None]
    if cfg.method == "lora":
        tensors = adapter_tensors(model)
        kind, md = "adapter", {"adapter": base_info(prep, name), "peft_config": peft_config_json(model)}
    elif cfg.method == "freeze":
        assert prep.base is not None
        tensors = changed_tensors(model, prep.base)
        kind, md = "delta", {"adapter": base_info(prep, name)}
    elif prep.base is not None and prep.base.anemoi_metadata:
        _write_anemoi_full(prep, model, path, operation, lineage, durable)
        return "inference"
    else:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        kind, md = "inference", {"model": prep.spec}
    params = {**lineage, "changed_tensors": len(tensors)} if kind == "delta" else lineage
    with Writer(path, kind=kind, metadata=md, parents=parents, operation=operation,  # type: ignore[arg-type]
                parameters=params, durable=durable, lineage_info=_lineage_info(lineage)) as w:
        w.add_section("weights", tensors)
    return kind
