"""Config changes of anemoi-models 0.4.2 -> 0.11.1 (anemoi-training 0.3.x -> 0.8.x) that depend on
what the config describes (the model task, the kind of each layer), so a fixed ``meta_set`` /
``meta_default`` cannot express them. Registered as ``meta_call`` functions in :mod:`.ops`; the step
files (``translations/0[4-9]*.toml``, ``translations/110*.toml``) say when they run.

Pure: a dict in, a new dict out, the input never mutated. Each function only fills what the config
lacks, at the value the old code computed with.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .legacy_config import model_section, target_of

_SKIP = "anemoi.models.layers.residual.SkipConnection"


def _truncation(config: Mapping[str, Any]) -> bool:
    """Whether training configured a truncated skip connection (anemoi-training <= 0.7 read the
    matrices from ``hardware.files.truncation``/``truncation_inv``, 0.8 from ``system.input``)."""
    for section, key in (("hardware", "files"), ("system", "input")):
        files = (config.get(section) or {}).get(key) or {}
        if isinstance(files, Mapping) and (files.get("truncation") or files.get("truncation_inv")):
            return True
    return False


def legacy_residual(md: Mapping[str, Any]) -> dict[str, Any]:
    """``model.residual`` where absent, as anemoi-models <= 0.10 computed the skip connection.

    Up to 0.10 the encoder-processor-decoder added the last input step to the prognostic outputs
    (``x[:, -1]``), the time interpolator the input step ``model.grid_skip``; 0.11.0 (anemoi-core
    #670) reads ``model.residual`` instead, and anemoi-training 0.8's configs write
    ``SkipConnection(step=-1)`` (forecasters) and ``SkipConnection(step=0)`` (interpolator, which
    was ``grid_skip: 0``). ``grid_skip`` is dropped (0.11 no longer reads it).

    Left alone (the build then says ``Missing key residual``): a truncated skip connection (its
    matrices are files outside the checkpoint) and an interpolator without one (``grid_skip:
    null``, which the installed anemoi-models cannot express)."""
    out = copy.deepcopy(dict(md))
    model = model_section(out)
    if model is None or "residual" in model or _truncation(out.get("config") or {}):
        return out
    interpolator = "Interpolator" in target_of(model.get("model")).rsplit(".", 1)[-1]
    if interpolator:
        step = model.get("grid_skip", 0)
        if step is None:
            return out
    else:
        step = -1
    model["residual"] = {"_target_": _SKIP, "step": int(step)}
    model.pop("grid_skip", None)
    return out


__all__ = ["legacy_residual"]


_COMPONENTS = ("encoder", "processor", "decoder")


def per_component_layer_kernels(md: Mapping[str, Any]) -> dict[str, Any]:
    """A flat ``model.layer_kernels`` (anemoi-models 0.4.2: ``{LayerNorm: ..., Linear: ...}`` for the
    whole model) -> one copy per component, ``model.layer_kernels.{encoder,processor,decoder}``.

    0.5.0 (anemoi-core#182) reads ``model.layer_kernels.get(<component>, {})`` and falls back to
    torch.nn.Linear / torch.nn.LayerNorm for a component without an entry, so a flat entry would
    silently lose its kernels (the GNN's AutocastLayerNorm); copied to each component they stay."""
    out = copy.deepcopy(dict(md))
    model = model_section(out)
    kernels = model.get("layer_kernels") if model is not None else None
    if not isinstance(kernels, dict) or any(k in kernels for k in _COMPONENTS):
        return out
    model["layer_kernels"] = {c: copy.deepcopy(kernels) for c in _COMPONENTS}
    return out


def _default_activation(target: str) -> str:
    """What anemoi-models 0.4-0.6 used for a component whose config names no activation: SiLU in
    the GNN layers, GELU in the (graph) transformer ones (their constructors' defaults)."""
    return "SiLU" if target.rsplit(".", 1)[-1].startswith("GNN") else "GELU"


def component_layer_kernels(md: Mapping[str, Any]) -> dict[str, Any]:
    """``model.layer_kernels.<component>`` -> ``model.<component>.layer_kernels``, with the
    component's ``activation`` (a torch.nn class name) as the ``Activation`` kernel.

    anemoi-models 0.7.0 (anemoi-core#163, "generalise activation function") builds each component
    with the ``layer_kernels`` of its own config and takes the activation from it
    (``Activation: {_target_: torch.nn.GELU}``); ``activation`` keys are no longer read. The
    kernels keep their targets and arguments (0.7 instantiates them as partials itself, so
    ``_partial_`` is dropped, as anemoi-training 0.5's configs write them). A component without an
    activation gets its old constructor default (SiLU for GNN layers, GELU otherwise)."""
    out = copy.deepcopy(dict(md))
    model = model_section(out)
    if model is None:
        return out
    per_component = model.get("layer_kernels")
    per_component = per_component if isinstance(per_component, dict) else {}
    shared_activation = model.get("activation")
    for name in _COMPONENTS:
        component = model.get(name)
        if not isinstance(component, dict) or "layer_kernels" in component:
            continue
        kernels = {k: {kk: vv for kk, vv in v.items() if kk != "_partial_"} if isinstance(v, Mapping) else v
                   for k, v in copy.deepcopy(per_component.get(name) or {}).items()}
        activation = component.pop("activation", None) or shared_activation \
            or _default_activation(target_of(component))
        kernels.setdefault("Activation", {"_target_": f"torch.nn.{activation}"})
        component["layer_kernels"] = kernels
    if all(isinstance(model.get(c), dict) and "layer_kernels" in model[c] for c in _COMPONENTS if c in model):
        model.pop("layer_kernels", None)
        model.pop("activation", None)
    return out


__all__ += ["component_layer_kernels", "per_component_layer_kernels"]
