"""The three fine-tuning methods, applied by module name: ``full``, ``freeze`` and ``lora``.

Globs (``fnmatch``, case-sensitive, ``*`` crosses dots) are matched against the names of
``model.named_modules()`` and against every dotted tail of them (``processor`` matches
``model.processor``), so anemoi-training's ``submodules_to_freeze`` values (a module's own name, at any
depth) work unchanged; a parameter belongs to a module when its name is the module's name plus
``.<something>``. Every glob must match at least one module - a typo would otherwise silently
train (or freeze) the wrong thing - and LoRA targets must be ``nn.Linear``: the adapter files we
write are merged as ``W + scale * B @ A`` on 2-D weights (:mod:`anemoi_ckpt.adapters.merge`).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from .config import DEFAULT_LORA_TARGETS, ConfigError, FreezeConfig, LoraConfig, TrainConfig
from .targets import default_lora_targets


def glob_matches(name: str, pattern: str) -> bool:
    """``pattern`` matches the module name or one of its dotted tails (``*.<pattern>``)."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, "*." + pattern)


def match_modules(model: nn.Module, patterns: list[str], key: str) -> list[str]:
    """Module names matching any of ``patterns`` (model order); a glob matching none is an error."""
    names = [n for n, _ in model.named_modules() if n]
    hits: list[str] = []
    for pat in patterns:
        found = [n for n in names if glob_matches(n, pat)]
        if not found:
            sample = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ConfigError(None, f"{key}: glob {pat!r} matches no module of the model",
                              f"module names look like: {sample}")
        hits.extend(n for n in found if n not in hits)
    return [n for n in names if n in set(hits)]


def _under(param: str, modules: list[str]) -> bool:
    return any(param.startswith(m + ".") for m in modules)


def apply_full(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def apply_freeze(model: nn.Module, cfg: FreezeConfig) -> nn.Module:
    """``freeze``: those modules' parameters stop training; ``train``: only those modules train."""
    if cfg.freeze is not None:
        mods, trained_if_under = match_modules(model, cfg.freeze, "freeze.freeze"), False
    else:
        assert cfg.train is not None
        mods, trained_if_under = match_modules(model, cfg.train, "freeze.train"), True
    for name, p in model.named_parameters():
        p.requires_grad_(_under(name, mods) == trained_if_under)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(None, "freeze: every parameter is frozen; nothing would train")
    return model


def lora_targets(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """The full module names the LoRA globs select (the model's defaults when ``targets`` is
    None); each must be an ``nn.Linear``."""
    if cfg.targets is None:
        names = default_lora_targets(model)
        if names is not None:
            return names
    names = match_modules(model, cfg.targets or DEFAULT_LORA_TARGETS, "lora.targets")
    modules = dict(model.named_modules())
    for n in names:
        if not isinstance(modules[n], nn.Linear):
            raise ConfigError(None, f"lora.targets: module {n!r} is a {type(modules[n]).__name__}, "
                              "not a Linear layer", "target the Linear layers inside it (e.g. "
                              f"{n}.*) or narrow the glob")
    return names


def peft_lora_config(model: nn.Module, cfg: LoraConfig) -> Any:
    """PEFT's ``LoraConfig`` on the resolved module names (full names, so nothing else matches)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=lora_targets(model, cfg), use_rslora=cfg.use_rslora,
                          use_dora=cfg.use_dora, bias="none", init_lora_weights=True)


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """``get_peft_model``: the base is frozen, LoRA A/B (and DoRA magnitudes) train. LoRA's A is
    drawn from torch's global RNG: seed first for a reproducible run."""
    from peft import get_peft_model

    return get_peft_model(model, peft_lora_config(model, cfg))


def check_method(model: nn.Module, cfg: TrainConfig) -> None:
    """Every glob check of ``apply_method`` without changing ``model`` (fail before any work)."""
    if cfg.method == "lora":
        lora_targets(model, cfg.lora)
    elif cfg.method == "freeze":
        assert cfg.freeze is not None
        if cfg.freeze.freeze is not None:
            match_modules(model, cfg.freeze.freeze, "freeze.freeze")
        else:
            match_modules(model, cfg.freeze.train or [], "freeze.train")


def apply_method(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The model to train: ``model`` itself (full, freeze) or its PEFT wrapper (lora)."""
    if cfg.method == "lora":
        return apply_lora(model, cfg.lora)
    if cfg.method == "freeze":
        assert cfg.freeze is not None
        return apply_freeze(model, cfg.freeze)
    return apply_full(model)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters in ``named_parameters`` order: the optimizer's order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]
