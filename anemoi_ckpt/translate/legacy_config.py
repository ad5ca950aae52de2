"""Config changes of anemoi-models 0.3.0 -> 0.4.1 (anemoi-training 0.2.x -> 0.3.x) that depend on
which model the config describes, so a fixed ``meta_set``/``meta_default`` cannot express them.

Each function takes the anemoi metadata and returns a new dict (the input is never mutated); each
only fills keys the config lacks or that the old code ignored, at the value the old code computed
with. The step files (``translations/04*.toml``) say when they run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

_AUTOCAST_LN = "anemoi.models.layers.normalization.AutocastLayerNorm"
_TORCH_LN = "torch.nn.LayerNorm"


def model_section(md: Mapping[str, Any]) -> dict[str, Any] | None:
    """``config.model`` of the metadata (a dict to edit in place in a copy), or None."""
    config = md.get("config")
    model = config.get("model") if isinstance(config, Mapping) else None
    return model if isinstance(model, dict) else None


def target_of(node: Any) -> str:
    """A config node's ``_target_`` class path (empty when it has none)."""
    return str(node.get("_target_", "")) if isinstance(node, Mapping) else ""


def _is_transformer_processor(model: Mapping[str, Any]) -> bool:
    return target_of(model.get("processor")).rsplit(".", 1)[-1] == "TransformerProcessor"


def transformer_dropout_off(md: Mapping[str, Any]) -> dict[str, Any]:
    """``model.processor.dropout_p`` -> 0.0 for a TransformerProcessor.

    anemoi-models 0.3.0 never applied attention dropout (its TransformerProcessor swallowed
    ``dropout_p`` in ``**kwargs``); 0.4.0 applies it in training mode, with 0.1 where the config
    has none. 0.0 keeps training from the file as it was; inference (eval mode) is unaffected."""
    out = copy.deepcopy(dict(md))
    model = model_section(out)
    if model is not None and _is_transformer_processor(model):
        model["processor"]["dropout_p"] = 0.0
    return out


def legacy_layer_kernels(md: Mapping[str, Any]) -> dict[str, Any]:
    """``model.layer_kernels`` where absent, as anemoi-training 0.3.x's model configs write it
    (``Linear``: torch.nn.Linear; ``LayerNorm``: AutocastLayerNorm in gnn.yaml, torch.nn.LayerNorm
    in graphtransformer.yaml and transformer.yaml), which is what anemoi-models <= 0.4.1 built
    without reading the key: its GNN MLPs normalise with AutocastLayerNorm, its (graph)
    transformer blocks and mapper heads with torch.nn.LayerNorm.

    AutocastLayerNorm is chosen only when the encoder, processor and decoder are all GNN layers;
    a mixed model (GNN and transformer layers) gets torch.nn.LayerNorm, which computes the same in
    full precision (the two differ only in the output dtype under autocast)."""
    out = copy.deepcopy(dict(md))
    model = model_section(out)
    if model is None or "layer_kernels" in model:
        return out
    parts = [target_of(model.get(k)) for k in ("encoder", "processor", "decoder") if k in model]
    gnn = bool(parts) and all(".GNN" in t for t in parts)
    model["layer_kernels"] = {
        "LayerNorm": {"_target_": _AUTOCAST_LN if gnn else _TORCH_LN, "_partial_": True},
        "Linear": {"_target_": "torch.nn.Linear", "_partial_": True},
    }
    return out


def legacy_attention_config(md: Mapping[str, Any]) -> dict[str, Any]:
    """For a TransformerProcessor without ``attention_implementation``: the attention settings as
    anemoi-training 0.3.x's transformer.yaml writes them, at what anemoi-models <= 0.4.1 did.

    That code took flash attention whenever ``flash_attn`` imported, else torch's
    scaled_dot_product_attention, and had no softcap or ALiBi. Whether flash_attn was there is in
    the provenance (``provenance_training.module_versions`` lists every imported module)."""
    out = copy.deepcopy(dict(md))
    model = model_section(out)
    if model is None or not _is_transformer_processor(model):
        return out
    proc = model["processor"]
    if "attention_implementation" in proc:
        return out
    modules = (out.get("provenance_training") or {}).get("module_versions") or {}
    flash = isinstance(modules, Mapping) and "flash_attn" in modules
    proc["attention_implementation"] = "flash_attention" if flash else "scaled_dot_product_attention"
    proc.setdefault("softcap", 0.0)
    proc.setdefault("use_alibi_slopes", False)
    return out


__all__ = ["legacy_attention_config", "legacy_layer_kernels", "transformer_dropout_off"]
