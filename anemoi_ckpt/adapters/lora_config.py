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

Every number the config feeds into the arithmetic is checked before use (:func:`check_config`,
:func:`rank_alpha`): ``r`` and ``rank_pattern`` values are integers in ``[1, MAX_RANK]``;
``lora_alpha`` and ``alpha_pattern`` values are finite numbers in ``(0, MAX_ALPHA]`` (JSON's
``NaN``, ``Infinity`` and ``1e999`` are refused, as are booleans and strings); the flags that
select a formula (``use_rslora``, ``use_dora``, ``fan_in_fan_out``, ``lora_bias``) are booleans
(a string ``"false"`` would be truthy). Each refusal is one line naming the file and the key.
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
#: Largest rank accepted (a LoRA rank is far below any weight dimension; PEFT uses 4 to 256).
MAX_RANK = 1 << 20
#: Largest lora_alpha accepted: PEFT's are 1 to a few hundred; beyond this the scale times any
#: trained B@A leaves fp16/bf16 (and soon fp32) range, so the merge could only write inf/NaN.
MAX_ALPHA = 1e6
#: Flags that choose the merge formula: must be JSON booleans (or absent / null).
_FLAGS = ("use_rslora", "use_dora", "fan_in_fan_out", "lora_bias")
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
    for key in _FLAGS:
        value = cfg.get(key)
        if value is not None and not isinstance(value, bool):
            raise FormatError(file, f"adapter_config.json: {key} must be true or false, not {_show(value)}")
    check_rank(cfg.get("r"), "r", file)
    check_alpha(cfg.get("lora_alpha"), "lora_alpha", file)
    for key, check in (("rank_pattern", check_rank), ("alpha_pattern", check_alpha)):
        value = cfg.get(key) or {}
        if not isinstance(value, dict):
            raise FormatError(file, f"adapter_config.json: {key} must be an object")
        for pattern, v in value.items():
            check(v, f"{key}[{pattern!r}]", file)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_rank(value: Any, key: str, file: str = "") -> int:
    """``value`` as a LoRA rank: an integer in ``[1, MAX_RANK]``, else a one-line FormatError
    naming ``file`` and ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK:
        raise FormatError(file, f"adapter_config.json: {key} must be an integer from 1 to {MAX_RANK}, "
                          f"not {_show(value)}")
    return value


def check_alpha(value: Any, key: str, file: str = "") -> float:
    """``value`` as a LoRA alpha: a finite number in ``(0, MAX_ALPHA]``, else a one-line
    FormatError naming ``file`` and ``key``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        try:
            f = float(value)  # an int beyond float range raises OverflowError
        except OverflowError:
            ok = False
        else:
            ok = math.isfinite(f) and 0 < f <= MAX_ALPHA
    if not ok:
        raise FormatError(file, f"adapter_config.json: {key} must be a finite number in (0, {MAX_ALPHA:g}], "
                          f"not {_show(value)}")
    return float(value)


def rank_alpha(cfg: Mapping[str, Any], module: str, file: str = "") -> tuple[int, float]:
    """(r, lora_alpha) for ``module`` after ``rank_pattern`` / ``alpha_pattern``."""
    ranks: dict[str, Any] = cfg.get("rank_pattern") or {}
    alphas: dict[str, Any] = cfg.get("alpha_pattern") or {}
    r = ranks.get(pattern_key(ranks, module, file), cfg["r"])
    alpha = alphas.get(pattern_key(alphas, module, file), cfg["lora_alpha"])
    r = check_rank(r, f"rank for {module}", file)
    return r, check_alpha(alpha, f"lora_alpha for {module}", file)


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
