"""The tree of ``anemoi-ckpt lineage`` reads as a person would write it; ``--format json`` keeps
every value exactly.

The pure formatting functions of ``anemoi_ckpt.lineage.view`` are tested on their own (hypothesis for floats
and arbitrary JSON values), then on a real merge of a real split of a fine-tune whose lineage
records what training writes: nulls, a nested config, a full digest, raw float losses, a long
list of target modules.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anemoi_ckpt
from anemoi_ckpt.lineage.view import format_float, format_list, format_value, short_digest
from tests.conftest import run_cli

SHA = "be7b1cdd284918" + "0123456789abcdef" * 3 + "01"  # 64 hex digits


# --- format_float ----------------------------------------------------------------------------

@pytest.mark.parametrize(("x", "text"), [
    (0.14319390058517456, "0.1432"), (0.6161663830280304, "0.6162"), (1.2102235555648804, "1.21"),
    (1e-4, "1e-4"), (1e-05, "1e-5"), (2.5e-5, "2.5e-5"), (3e-4, "3e-4"), (0.001, "0.001"),
    (0.003, "0.003"), (0.5, "0.5"), (0.0, "0"), (-0.25, "-0.25"), (1.0, "1"), (300.0, "300"),
    (9999.7, "1e4"), (123456.0, "1.235e5"), (4.5e-07, "4.5e-7"), (-1e-12, "-1e-12"),
    (float("inf"), "inf"), (float("-inf"), "-inf"), (float("nan"), "nan"),
])
def test_format_float_examples(x: float, text: str) -> None:
    assert format_float(x) == text


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_format_float_parses_back_within_4_significant_digits(x: float) -> None:
    text = format_float(x)
    assert "None" not in text and " " not in text
    back = float(text)
    if math.isnan(x):
        assert math.isnan(back)
    elif math.isinf(x) or x == 0:
        assert back == x
    else:
        # 4 significant digits: off by at most half a unit in the 4th digit
        assert math.isclose(back, x, rel_tol=5e-4, abs_tol=0), (x, text)
        assert math.copysign(1, back) == math.copysign(1, x)
    assert "e+" not in text and "e-0" not in text and not re.search(r"\.\d*0(e|$)", text)
    assert len(text) <= 11 or text == repr(x).replace("e+", "e")  # the overflow fallback only


# --- short_digest, format_list, format_value ---------------------------------------------------

def test_short_digest() -> None:
    assert short_digest("sha256:" + SHA) == "sha256:be7b1cdd2849"
    assert short_digest("blake2b:" + SHA.upper()) == "blake2b:" + SHA.upper()[:12]
    assert short_digest(SHA) == SHA[:12]  # bare hex of a hash length
    for text in ("sha256:abc", "deadbeef", "demo region", "lora", "sha256:" + SHA + "x", ""):
        assert short_digest(text) == text
    assert short_digest(short_digest("sha256:" + SHA)) == "sha256:be7b1cdd2849"


def test_format_list() -> None:
    assert format_list([]) is None
    assert format_list([0.5, 0.5]) == "[0.5,0.5]"
    assert format_list([1.0]) == "[1]"
    assert format_list(["q", "k", "v"]) == "[q,k,v]"
    assert format_list([f"processor.proc.{i}.attention.lin_q" for i in range(9)]) == \
        "[processor.pro...,processor.pro...,processor.pro...,...9 items]"
    assert format_list([{"name": "rename"}, {"name": "other"}]) == "2 items"
    assert format_list([None]) == "1 item"


def test_format_value() -> None:
    for nothing in (None, "", [], {}, {"lr": 1e-4}):
        assert format_value(nothing) is None
    assert format_value(True) == "True" and format_value(False) == "False"
    assert format_value(0) == "0" and format_value(10**20) == str(10**20)
    assert format_value(0.14319390058517456) == "0.1432" and format_value(1e-4) == "1e-4"
    assert format_value("demo region") == "demo region"
    assert format_value("sha256:" + SHA) == "sha256:be7b1cdd2849"
    assert format_value("a\nb") == "a\\x0ab"  # one line
    assert format_value("x" * 40) == "x" * 21 + "..."


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.text(max_size=40).filter(lambda s: "None" not in s),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_format_value_never_shows_none(value: object) -> None:
    text = format_value(value)
    if value is None or value == "" or value == [] or isinstance(value, dict):
        assert text is None
    else:
        assert text is not None and "None" not in text and "\n" not in text


# --- on real files ---------------------------------------------------------------------------

TRAINING_PARAMETERS = {
    "method": "full",
    "config": {"base": None, "optimizer": {"lr": 1e-4, "betas": [0.9, 0.999]}, "max_epochs": None},
    "config_digest": "sha256:" + SHA,
    "lr": 1e-4,
    "resume": None,
    "targets": [f"processor.proc.{i}.attention.lin_q" for i in range(9)],
    "train_loss": 0.14319390058517456,
    "val_loss": 0.6161663830280304,
    "global_step": 100,
}


@pytest.fixture
def merged(demo_file: Path, tmp_path: Path) -> dict[str, Path]:
    """base -> fine-tune (training's parameters) -> split (rank 4) -> merge, as the demo does."""
    from anemoi_ckpt.adapters import merge, split

    g = torch.Generator().manual_seed(7)
    with anemoi_ckpt.open(demo_file) as ck:
        weights = {k: v.clone() for k, v in ck.tensors().items()}
    for name, t in weights.items():
        if t.ndim == 2 and t.dtype == torch.float32:
            a, b = torch.randn(2, t.shape[1], generator=g), torch.randn(t.shape[0], 2, generator=g)
            weights[name] = t + 0.01 * (b @ a)
    ft = tmp_path / "ft.anc"
    anemoi_ckpt.save(ft, weights, parents=[demo_file], operation="fine-tune",
                     parameters=TRAINING_PARAMETERS)
    split(ft, demo_file, tmp_path / "lora.anc", rank=4)
    out = merge(demo_file, [tmp_path / "lora.anc"], tmp_path / "merged.anc")
    return {"base": demo_file, "ft": ft, "lora": tmp_path / "lora.anc", "merged": Path(out.path)}


def test_tree_reads_as_a_person_would(merged: dict[str, Path]) -> None:
    out = run_cli("lineage", str(merged["merged"]))
    assert out.returncode == 0, out.stderr
    tree = out.stdout
    assert "None" not in tree and "0.1431939" not in tree and SHA[12:] not in tree
    lines = tree.splitlines()
    merge_params = "method=linear weights=[1] seed=0 adapters=[lora]"  # density=None rank=None gone
    assert re.search(rf"  merge  {re.escape(merge_params)}  [0-9a-f]{{12}}  ", lines[0]), lines[0]
    split_line = next(ln for ln in lines if "  split  " in ln)
    assert "  split  rank=4 randomized=True  " in split_line  # energy=None targets=None left out
    ft_line = next(ln for ln in lines if "  fine-tune  " in ln)
    # the nested config and the nulls are left out; four parameters shown
    assert "  fine-tune  method=full config_digest=sha256:be7b1cdd2849 lr=1e-4 " \
           "targets=[processor.pro...,processor.pro...,processor.pro...,...9 items]  " in ft_line


def test_json_keeps_every_value(merged: dict[str, Path]) -> None:
    out = run_cli("lineage", str(merged["merged"]), "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    with anemoi_ckpt.open(merged["merged"]) as ck:
        assert doc == ck.lineage.model_dump(mode="json")
    by_op = {r["operation"]: r["parameters"] for r in doc["records"]}
    assert by_op["fine-tune"] == TRAINING_PARAMETERS  # full digest, raw floats, nulls, the config
    assert by_op["split"]["energy"] is None and by_op["merge"]["density"] is None
    assert '"train_loss": 0.14319390058517456' in out.stdout


@pytest.mark.parametrize("fmt", ["dot", "mermaid"])
def test_graph_labels_show_no_none(merged: dict[str, Path], fmt: str) -> None:
    out = run_cli("lineage", str(merged["merged"]), "--format", fmt)
    assert out.returncode == 0 and "None" not in out.stdout
