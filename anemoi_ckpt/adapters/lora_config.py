"""What a PEFT LoRA ``adapter_config.json`` says about one module: rank, alpha and scale.

Pure functions over the config dict (no torch, no I/O). The rules mirror peft 0.21:

- ``rank_pattern`` / ``alpha_pattern`` keys are regular expressions matched against the module
  name (relative to the wrapped model) with ``re.match(rf"(.*\\.)?({key})$", module)``; the first
  matching key in the dict's order wins (``peft.utils.other.get_pattern_key``), else ``r`` /
  ``lora_alpha`` (``LoraModel._create_and_replace``);
- scale is ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with ``use_rslora``
  (``LoraLayer.update_layer``), both taken after the pattern overrides.

Features whose merge differs from ``W + scale * B @ A`` (or the DoRA form) and that are not
handled here are refused by :func:`check_config`, never silently merged wrong (peft#3761).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import FormatError

#: Config keys that change what a merge means; refused when set (truthy).
_UNSUPPORTED = {
    "use_qalora": "QA-LoRA (pooled inputs)",
    "use_bdlora": "BD-LoRA",
    "kasa_config": "KaSA",
    "monteclora_config": "MonteCLoRA",
    "velora_config": "VeLoRA",
    "arrow_config": "Arrow routing",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "LoRA on nn.Parameter (target_parameters)",
    "megatron_config": "Megatron layers",
}
#: init_lora_weights values that rewrite the base weights at initialisation: the adapter is only
#: valid on that rewritten base unless it was saved with path_initial_model_for_weight_conversion.
_MUTATING_INIT = ("pissa", "olora", "corda", "loftq", "lora_ga")


def pattern_key(patterns: Iterable[str], module: str, file: str = "") -> str:
    """The pattern key that applies to ``module`` (peft's ``get_pattern_key``): the first key
    ``k`` with ``re.match(rf"(.*\\.)?({k})$", module)``, else ``module`` itself."""
    for key in patterns:
        try:
            hit = re.match(rf"(.*\.)?({key})$", module)
        except re.error as e:
            raise FormatError(file, f"adapter_config.json: pattern {key!r} is not a regular "
                              f"expression ({e})") from None
        if hit:
            return key
    return module


def check_config(cfg: Mapping[str, Any], file: str = "") -> None:
    """Refuse configs this merge cannot honour exactly (one-line FormatError naming ``file``)."""
    peft_type = cfg.get("peft_type")
    if peft_type != "LORA":
        raise FormatError(file, f"adapter_config.json: peft_type {peft_type!r} is not supported",
                          "only LoRA (and DoRA, rsLoRA) adapters can be merged")
    for key, what in _UNSUPPORTED.items():
        if cfg.get(key):
            raise FormatError(file, f"adapter_config.json: {what} ({key}) is not supported by merge")
    init = str(cfg.get("init_lora_weights", True)).lower()
    if init.startswith(_MUTATING_INIT):
        raise FormatError(file, f"adapter_config.json: init_lora_weights={cfg.get('init_lora_weights')!r} "
                          "changed the base weights at initialisation",
                          "save the adapter with path_initial_model_for_weight_conversion first")
    for key in ("r", "lora_alpha"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise FormatError(file, f"adapter_config.json: {key} must be a positive number, not {value!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        value = cfg.get(key) or {}
        if not isinstance(value, dict):
            raise FormatError(file, f"adapter_config.json: {key} must be an object")


def rank_alpha(cfg: Mapping[str, Any], module: str, file: str = "") -> tuple[int, float]:
    """(r, lora_alpha) for ``module`` after ``rank_pattern`` / ``alpha_pattern``."""
    ranks: dict[str, Any] = cfg.get("rank_pattern") or {}
    alphas: dict[str, Any] = cfg.get("alpha_pattern") or {}
    r = ranks.get(pattern_key(ranks, module, file), cfg["r"])
    alpha = alphas.get(pattern_key(alphas, module, file), cfg["lora_alpha"])
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise FormatError(file, f"adapter_config.json: rank {r!r} for {module} is not a positive integer")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise FormatError(file, f"adapter_config.json: alpha {alpha!r} for {module} is not a number")
    return r, float(alpha)


def lora_scale(cfg: Mapping[str, Any], module: str, file: str = "") -> float:
    """``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora`` (rsLoRA keeps the update's size
    independent of the rank)."""
    r, alpha = rank_alpha(cfg, module, file)
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def fan_in_fan_out(cfg: Mapping[str, Any]) -> bool:
    """True when the base stores the weight as (in, out) (GPT-2 style Conv1D)."""
    return bool(cfg.get("fan_in_fan_out"))


def use_dora(cfg: Mapping[str, Any]) -> bool:
    return bool(cfg.get("use_dora"))
