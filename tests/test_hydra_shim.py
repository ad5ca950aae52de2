"""The pure-Python stand-in for ``hydra.utils.instantiate`` (``anemoi_ckpt.anemoi.hydra_shim``),
against the Hydra semantics anemoi-models relies on. Needs omegaconf (the anemoi environment);
``test_anemoi_load.py::test_builds_without_hydra`` checks it end to end on real models."""

from __future__ import annotations

import functools

import pytest

from tests.conftest import require_module

omegaconf = require_module("omegaconf", reason="needs omegaconf (make test-anemoi)")

from anemoi_ckpt.anemoi import hydra_shim  # noqa: E402
from anemoi_ckpt.anemoi.hydra_shim import InstantiationException, get_class, instantiate  # noqa: E402

DictConfig, ListConfig, OmegaConf = omegaconf.DictConfig, omegaconf.ListConfig, omegaconf.OmegaConf


def record(*args, **kwargs):
    return args, kwargs


TARGET = f"{__name__}.record"


def test_target_and_keyword_overrides() -> None:
    args, kwargs = instantiate(OmegaConf.create({"_target_": TARGET, "a": 1, "b": 2}), b=3, c=4)
    assert args == () and kwargs == {"a": 1, "b": 3, "c": 4}


def test_partial_and_args() -> None:
    p = instantiate({"_target_": TARGET, "_args_": [1, 2], "x": 5}, _partial_=True)
    assert isinstance(p, functools.partial)
    assert p(3, y=6) == ((1, 2, 3), {"x": 5, "y": 6})


def test_recursive_instantiates_nested_targets_and_convert_none_keeps_configs() -> None:
    cfg = OmegaConf.create({"_target_": TARGET, "inner": {"_target_": TARGET, "v": 1},
                            "plain": {"k": [1, 2]}})
    _, kwargs = instantiate(cfg)
    assert kwargs["inner"] == ((), {"v": 1})
    assert isinstance(kwargs["plain"], DictConfig) and kwargs["plain"].k == [1, 2]


def test_not_recursive_and_convert_all() -> None:
    cfg = {"_target_": TARGET, "_convert_": "all", "inner": {"_target_": TARGET, "v": 1},
           "seq": [1, {"a": 2}]}
    _, kwargs = instantiate(cfg, _recursive_=False)
    assert kwargs["inner"] == {"_target_": TARGET, "v": 1} and type(kwargs["inner"]) is dict
    assert kwargs["seq"] == [1, {"a": 2}] and type(kwargs["seq"]) is list


def test_objects_passed_as_keywords_are_untouched() -> None:
    obj = object()
    config = OmegaConf.create({"x": 1})
    _, kwargs = instantiate({"_target_": TARGET}, thing=obj, model_config=config)
    assert kwargs["thing"] is obj and kwargs["model_config"] is config


def test_errors() -> None:
    with pytest.raises(InstantiationException, match="no _target_"):
        instantiate({"a": 1})
    with pytest.raises(InstantiationException, match="cannot"):
        instantiate({"_target_": "no_such_module_xyz.thing"})
    with pytest.raises(InstantiationException, match="error in call"):
        instantiate({"_target_": "builtins.int", "no_such_keyword": 1})
    assert get_class("collections.OrderedDict").__name__ == "OrderedDict"
    with pytest.raises(ValueError):
        get_class("os.path.join")


def test_install_does_nothing_where_hydra_is_installed() -> None:
    pytest.importorskip("hydra", reason="hydra-core not installed here")
    import sys

    assert hydra_shim.install() is False
    assert not getattr(sys.modules["hydra"], "__anemoi_ckpt_shim__", False)
