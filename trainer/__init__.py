"""anemoi_ckpt.trainer: the bundled Lightning trainer (LoRA, freeze and full fine-tuning from an ``.anc``).

This folder is the package ``anemoi_ckpt.trainer`` (pyproject maps it with ``package-dir``), an
optional part installed with the ``trainer`` extra. Importing the package itself pulls in neither
Lightning nor PEFT; its submodules do.
"""

from typing import Any

#: Public names, imported on first use: ``import anemoi_ckpt.trainer`` stays free of Lightning.
_EXPORTS = {"TrainConfig": "config", "ConfigError": "config", "load_config": "config",
            "train": "run", "RunResult": "run", "AncCheckpointIO": "checkpoint_io",
            "WeatherModule": "module", "SyntheticWeather": "data"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
