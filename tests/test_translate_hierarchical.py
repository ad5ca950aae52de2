"""The op kind and metadata function the hierarchical-model steps use (``level_rename``,
``broadcast_hidden_trainables``); the steps themselves are proven by their layouts in
fixtures/legacy/layouts/hierarchical_*/ (tests/test_translations.py) and, bit for bit, by the
genuine hierarchical fixtures (tests/test_anemoi_releases.py)."""

from __future__ import annotations

import copy
import re

import pytest

from anemoi_ckpt.errors import FormatError
from anemoi_ckpt.translate import parse_step
from anemoi_ckpt.translate.hierarchical import broadcast_hidden_trainables, hidden_levels
from anemoi_ckpt.translate.ops import Context, OpError, check_params, op_level_rename

MD = {"config": {"model": {"model": {"hidden_nodes_name": ["h1", "h2", "h3"]}}}}


def _op(**params):
    params.setdefault("levels", ["config.model.model.hidden_nodes_name", "config.graph.hidden"])
    params["pattern"] = re.compile(params["pattern"])
    return params


def test_level_rename_shifts_along_the_levels() -> None:
    names = {"weights": ["model.upscale.h2.x", "model.upscale.h3.y", "model.other.h3.z"]}
    out = op_level_rename(names, _op(pattern=r"^model\.upscale\.(?P<level>[^.]+)\.",
                                     replacement="model.down.{level}.", shift=-1), Context(MD, "f"))
    assert out == {("weights", "model.upscale.h2.x"): ("weights", "model.down.h1.x"),
                   ("weights", "model.upscale.h3.y"): ("weights", "model.down.h2.y")}


def test_level_rename_at_renames_one_level_only() -> None:
    names = {"weights": ["model.p.h1.x", "model.p.h3.x"]}
    out = op_level_rename(names, _op(pattern=r"^model\.p\.(?P<level>[^.]+)\.", replacement="model.q.",
                                     at=-1), Context(MD, "f"))
    assert out == {("weights", "model.p.h3.x"): ("weights", "model.q.x")}


def test_level_rename_reads_the_first_present_path() -> None:
    md = {"config": {"graph": {"hidden": ["a", "b"]}}}
    out = op_level_rename({"w": ["u.b.x"]}, _op(pattern=r"^u\.(?P<level>[^.]+)\.", replacement="d.{level}.",
                                                shift=-1), Context(md, "f"))
    assert out == {("w", "u.b.x"): ("w", "d.a.x")}


@pytest.mark.parametrize(("name", "md"), [("model.upscale.h1.x", MD),      # shift before the first level
                                          ("model.upscale.zz.x", MD),      # not a level
                                          ("model.upscale.h2.x", {})])     # no level list
def test_level_rename_refuses_what_it_cannot_place(name: str, md: dict) -> None:
    with pytest.raises(OpError):
        op_level_rename({"weights": [name]}, _op(pattern=r"^model\.upscale\.(?P<level>[^.]+)\.",
                                                 replacement="d.{level}.", shift=-1), Context(md, "f"))


def test_level_rename_parameters_are_checked() -> None:
    assert check_params("level_rename", {"pattern": re.compile("x"), "replacement": "y",
                                         "levels": ["a"]}) == ["level_rename pattern lacks the named group 'level'"]
    assert check_params("level_rename", {"pattern": re.compile("(?P<level>x)"), "replacement": "y",
                                         "levels": "a", "shift": 1.5})
    step = b'name = "s"\ndescription = "d"\n[applies_to]\nkeys_match = "x"\n[[op]]\nkind = "level_rename"\n' \
           b'pattern = "x"\nreplacement = "y"\nlevels = ["a"]\n'
    with pytest.raises(FormatError, match="named group 'level'"):
        parse_step(step, "s.toml")


def test_broadcast_hidden_trainables_per_level_and_pure() -> None:
    md = {"config": {"model": {"model": {"hidden_nodes_name": ["hidden_1", "hidden_2"]},
                               "node_trainable_parameters": {"data": 8, "hidden": 4, "hidden_2": 2}}}}
    before = copy.deepcopy(md)
    out = broadcast_hidden_trainables(md)
    assert md == before
    assert out["config"]["model"]["node_trainable_parameters"] == {"data": 8, "hidden_1": 4, "hidden_2": 2}
    single = {"config": {"model": {"model": {"hidden_nodes_name": "hidden"},
                                   "node_trainable_parameters": {"data": 8, "hidden": 4}}}}
    assert broadcast_hidden_trainables(single) == single
    assert hidden_levels({"config": {"graph": {"hidden": ["a", "b"]}}}) == ["a", "b"]
