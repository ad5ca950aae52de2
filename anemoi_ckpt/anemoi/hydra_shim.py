"""Build an anemoi model where hydra-core is not installed: a pure-Python ``_target_`` instantiation.

anemoi-models builds its module tree with ``hydra.utils.instantiate`` (and imports
``hydra.errors.InstantiationException`` and ``hydra.utils.get_class``). At inference nothing else of
Hydra is needed: the configuration in the metadata is already resolved. When ``import hydra`` fails,
:func:`install` registers small stand-ins for those three names in ``sys.modules`` before anemoi-models
is imported, so an inference environment can leave Hydra out. Where Hydra is installed it is always
used, and this module does nothing.

The subset of Hydra's semantics anemoi-models relies on (checked against anemoi-models 0.19):
``_target_`` (a dotted path to a class or function), keyword overrides, ``_args_``, ``_partial_``
(returns ``functools.partial``), ``_recursive_`` (nested ``_target_`` mappings instantiated first,
default true) and ``_convert_`` (``"none"``: nested containers stay OmegaConf containers;
``"partial"``, ``"object"``, ``"all"``: plain dicts and lists). Objects passed as keywords (tensors,
graphs, index collections) are passed on untouched.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import types
from typing import Any

LOG = logging.getLogger(__name__)

_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


class InstantiationException(Exception):
    """Raised when a ``_target_`` cannot be imported or called (the name anemoi-models catches)."""


def get_class(path: str) -> type:
    obj = _locate(path)
    if not isinstance(obj, type):
        raise ValueError(f"{path!r} is not a class")
    return obj


def _locate(path: str) -> Any:
    """Import the longest importable module prefix of ``path``, then walk the attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError as e:
            raise InstantiationException(f"cannot locate {path!r}: {e}") from None
        return obj
    raise InstantiationException(f"cannot import any module of {path!r}")


def _is_config_mapping(value: Any) -> bool:
    from omegaconf import DictConfig

    return isinstance(value, (dict, DictConfig))


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _convert(value: Any, mode: str) -> Any:
    """A config value as the target receives it under ``_convert_=mode``."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if mode in ("all", "object", "partial"):
        return _plain(value)
    if isinstance(value, (dict, list)) and not isinstance(value, (DictConfig, ListConfig)):
        try:
            return OmegaConf.create(value)
        except Exception:  # containers of arbitrary objects stay as they are
            return value
    return value


def _build(value: Any, recursive: bool, mode: str) -> Any:
    """A config value with its nested ``_target_`` mappings instantiated (if ``recursive``) and
    converted as ``_convert_=mode`` says; a nested node inherits ``mode`` unless it sets its own."""
    from omegaconf import ListConfig

    if recursive and _is_config_mapping(value):
        if "_target_" in value:
            return instantiate(value, **({} if "_convert_" in value else {"_convert_": mode}))
        return _convert({k: _build(v, recursive, mode) for k, v in _plain(value).items()}, mode)
    if recursive and isinstance(value, (list, ListConfig)):
        return _convert([_build(v, recursive, mode) for v in _plain(value)], mode)
    return _convert(value, mode)


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` for resolved configurations (see the module docstring)."""
    if config is None:
        return None
    if not _is_config_mapping(config):
        raise InstantiationException(f"cannot instantiate a {type(config).__name__}")
    cfg = dict(_plain(config))
    overrides = dict(kwargs)
    special = {k: overrides.pop(k) if k in overrides else cfg.pop(k, None) for k in _KEYS}
    for k in _KEYS:
        cfg.pop(k, None)
    if special["_target_"] is None:
        raise InstantiationException(f"no _target_ in {sorted(cfg)}")
    target = _locate(str(special["_target_"]))
    recursive = True if special["_recursive_"] is None else bool(special["_recursive_"])
    mode = str(special["_convert_"] or "none")
    call_kwargs = {k: _build(v, recursive, mode) for k, v in cfg.items()}
    for k, v in overrides.items():  # passed by the caller: objects untouched, configs converted
        call_kwargs[k] = _plain(v) if mode in ("all", "object", "partial") else v
    call_args = [*(_build(a, recursive, mode) for a in (special["_args_"] or [])), *args]
    if special["_partial_"]:
        return functools.partial(target, *call_args, **call_kwargs)
    try:
        return target(*call_args, **call_kwargs)
    except Exception as e:
        raise InstantiationException(f"error in call to {special['_target_']}: {e}") from e


def install() -> bool:
    """Register the stand-in ``hydra``, ``hydra.utils`` and ``hydra.errors`` modules if hydra-core is
    not importable. Returns whether it did. Call before importing anemoi-models."""
    if isinstance(sys.modules.get("hydra"), types.ModuleType) and getattr(sys.modules["hydra"], "__anemoi_ckpt_shim__", False):
        return True
    try:
        import hydra  # noqa: F401
        import hydra.utils  # noqa: F401  (the name anemoi-models imports)
        return False
    except ImportError:
        pass
    root = types.ModuleType("hydra")
    root.__anemoi_ckpt_shim__ = True  # type: ignore[attr-defined]
    utils = types.ModuleType("hydra.utils")
    utils.instantiate = instantiate  # type: ignore[attr-defined]
    utils.get_class = get_class  # type: ignore[attr-defined]
    errors = types.ModuleType("hydra.errors")
    errors.InstantiationException = InstantiationException  # type: ignore[attr-defined]
    root.utils, root.errors = utils, errors  # type: ignore[attr-defined]
    sys.modules.update({"hydra": root, "hydra.utils": utils, "hydra.errors": errors})
    LOG.info("hydra-core is not installed: anemoi-ckpt's _target_ instantiation builds the model")
    return True


__all__ = ["InstantiationException", "get_class", "install", "instantiate"]
