"""Issue 17, bad input: every mistake in fine-tuning an anemoi model is one line before training.

Each case runs the real ``anemoi-ckpt finetune`` console script (a subprocess, as a user would) on a
genuine anemoi-training 0.17.1 checkpoint converted to ``.anc`` and a real anemoi-datasets zarr, and
checks: exit status 2 (the CLI's status for a configuration or input the run cannot start with),
exactly one ``anemoi-ckpt: error:`` line naming the problem (third-party deprecation warnings aside,
which the CLI prefixes ``anemoi-ckpt: warning:``), no traceback, and nothing written (the output folder is never created). The default LoRA targets per anemoi
processor type are checked here too, on the models the installed anemoi-models builds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, require_module

require_module("anemoi.models", "needs anemoi-models (make test-anemoi)")
require_module("anemoi.datasets", "needs anemoi-datasets (make test-anemoi)")
pytest.importorskip("lightning")
pytest.importorskip("peft")

import torch  # noqa: E402
import yaml  # noqa: E402

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.anemoi import load_model  # noqa: E402
from anemoi_ckpt.builders import build_model, model_spec  # noqa: E402
from anemoi_ckpt.trainer.config import ConfigError, LoraConfig, load_config  # noqa: E402
from anemoi_ckpt.trainer.run import train  # noqa: E402
from anemoi_ckpt.trainer.methods import lora_targets, match_modules  # noqa: E402
from tests.anemoi_datasets import session_zarr, wrong_specs  # noqa: E402

FIXTURES = REPO / "fixtures" / "legacy" / "anemoi"
CLI = Path(sys.executable).parent / "anemoi-ckpt"


def _convert(src: Path, out: Path) -> Path:
    subprocess.run([str(CLI), "convert", str(src), str(out)], check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _convert(FIXTURES / "graphtransformer" / "last.ckpt", tmp_path_factory.mktemp("b") / "gt.anc")


@pytest.fixture(scope="module")
def zarr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_zarr(tmp_path_factory, dynamics="finetune")


@pytest.fixture(scope="module")
def other_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_zarr(tmp_path_factory, dynamics="finetune", grid="8x16")


def _config(base: Path, zarr: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "base": str(base), "method": "lora", "max_steps": 2,
        "data": {"dataset": str(zarr), "start": "2020-02-01", "end": "2020-02-10",
                 "validation": {"start": "2020-02-15", "end": "2020-02-20"}, "batch_size": 2},
    }
    for key, value in over.items():
        node = cfg
        *path, leaf = key.split("__")
        for p in path:
            node = node.setdefault(p, {})
        if value is _DROP:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return cfg


_DROP = object()


def _refused(tmp_path: Path, cfg: dict[str, Any], cli: bool = False) -> str:
    """The one-line refusal of ``cfg``: through the console script (``cli``), or - the same
    ConfigError the CLI prints, without a ~15 s interpreter start - through the Python API."""
    out = tmp_path / "runs"
    cfg = {**cfg, "output": {"dir": str(out), "name": "x"}}
    if not cli:
        with pytest.raises(ConfigError) as exc:
            train(load_config(None, data=cfg), accelerator="cpu", durable=False)
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))
        line = exc.value.line()
        assert "\n" not in line
        return line
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([str(CLI), "finetune", str(path)], capture_output=True, text=True, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("anemoi-ckpt: warning:")]
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("anemoi-ckpt: error: "), r.stderr[-2000:]
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))  # nothing written, not even the folder
    return errors[0]


def test_dataset_missing_variables_is_refused(tmp_path: Path, base: Path, zarr: Path) -> None:
    spec, words = wrong_specs(zarr)["missing_variable"]
    line = _refused(tmp_path, _config(base, zarr, data__dataset=spec), cli=True)
    assert words in line and str(zarr) in line


def test_dataset_on_another_grid_is_refused(tmp_path: Path, base: Path, zarr: Path, other_grid: Path) -> None:
    spec, words = wrong_specs(zarr, other_grid)["grid"]
    line = _refused(tmp_path, _config(base, zarr, data__dataset=spec))
    assert words in line and "128" in line and "200" in line


def test_dataset_at_another_frequency_is_refused(tmp_path: Path, base: Path, zarr: Path) -> None:
    spec, words = wrong_specs(zarr)["frequency"]
    assert words in _refused(tmp_path, _config(base, zarr, data__dataset=spec))


@pytest.mark.parametrize("key,value,words", [
    ("data__start", "2019-06-01", "outside the dataset"),
    ("data__end", "2021-01-01", "outside the dataset"),
    ("data__validation", {"start": "2020-02-08", "end": "2020-02-12"}, "overlaps the training period"),
])
def test_dates_outside_the_dataset_are_refused(tmp_path: Path, base: Path, zarr: Path, key: str,
                                               value: Any, words: str) -> None:
    assert words in _refused(tmp_path, _config(base, zarr, **{key: value}))


def test_lora_target_that_is_not_a_linear_is_refused(tmp_path: Path, base: Path, zarr: Path) -> None:
    line = _refused(tmp_path, _config(base, zarr, lora__targets=["processor.proc.0.attention"]), cli=True)
    assert "lora.targets" in line and "not a Linear layer" in line


def test_freeze_glob_matching_nothing_is_refused(tmp_path: Path, base: Path, zarr: Path) -> None:
    line = _refused(tmp_path, _config(base, zarr, method="freeze", freeze={"freeze": ["encoder", "procesor"]}))
    assert "freeze.freeze: glob 'procesor' matches no module" in line


def test_a_base_that_is_not_an_anemoi_model_is_refused_for_anemoi_data(tmp_path: Path, zarr: Path) -> None:
    ref = tmp_path / "ref.anc"
    torch.manual_seed(0)
    model = build_model({"builder": "reference", "config": {"size": "tiny"}})
    anemoi_ckpt.save(ref, model.state_dict(), metadata={"model": model_spec(model)})
    line = _refused(tmp_path, _config(ref, zarr))
    assert "data.dataset is for anemoi bases" in line and "'reference'" in line


def test_an_anemoi_base_without_a_dataset_is_refused(tmp_path: Path, base: Path, zarr: Path) -> None:
    line = _refused(tmp_path, _config(base, zarr, data={"batch_size": 2}))
    assert "the base is an anemoi model: give data.dataset" in line


def test_an_anemoi_file_that_does_not_build_is_refused(tmp_path: Path, zarr: Path) -> None:
    """A file with anemoi metadata whose config is gone: the anemoi builder's one line."""
    src = _convert(FIXTURES / "graphtransformer" / "inference-last.ckpt", tmp_path / "inf.anc")
    with anemoi_ckpt.open(src) as ck:
        md = dict(ck.anemoi_metadata)
        weights = {k: v.clone() for k, v in ck.tensors("weights").items()}
        buffers = {k: v.clone() for k, v in ck.tensors("buffers").items()}
        arrays = dict(ck.supporting_arrays)
    md.pop("config")
    bad = tmp_path / "noconfig.anc"
    with anemoi_ckpt.Writer(bad, kind="inference", anemoi_metadata=md, supporting_arrays=arrays) as w:
        w.add_section("weights", weights)
        w.add_section("buffers", buffers)
    line = _refused(tmp_path, _config(bad, zarr), cli=True)
    assert "noconfig.anc" in line and "no resolved training config" in line


def test_bf16_base_with_full_is_refused(tmp_path: Path, base: Path, zarr: Path) -> None:
    line = _refused(tmp_path, _config(base, zarr, method="full", base_dtype="bf16"))
    assert "base_dtype bf16" in line and "full" in line


# ---------------------------------------------------------------- default LoRA targets per processor
@pytest.mark.parametrize("fixture,processor,leaves", [
    ("graphtransformer", "TransformerProcessor",
     {"attention.lin_q", "attention.lin_k", "attention.lin_v", "attention.projection", "mlp.mlp.0", "mlp.mlp.2"}),
    ("gnn", "GNNProcessor", {"node_mlp.mlp.0", "node_mlp.mlp.2", "node_mlp.mlp.4",
                             "conv.edge_mlp.mlp.0", "conv.edge_mlp.mlp.2", "conv.edge_mlp.mlp.4"}),
    ("0.16.0/graphtransformer", "GraphTransformerProcessor",
     {"lin_query", "lin_key", "lin_value", "lin_self", "projection", "node_dst_mlp.mlp.0", "node_dst_mlp.mlp.2"}),
])
def test_default_lora_targets_are_the_processor_linears(tmp_path: Path, fixture: str, processor: str,
                                                        leaves: set[str]) -> None:
    model = load_model(_convert(FIXTURES / fixture / "inference-last.ckpt", tmp_path / "m.anc"))
    assert type(model.model.processor).__name__ == processor
    names = lora_targets(model, LoraConfig())
    modules = dict(model.named_modules())
    assert names and all(isinstance(modules[n], torch.nn.Linear) for n in names)
    assert all(n.startswith("model.processor.proc.") for n in names)  # the processor only
    n_blocks = len(model.model.processor.proc)
    got = {n.split(".", 4)[4] for n in names}  # model.processor.proc.<i>.<leaf>
    assert got == leaves and len(names) == n_blocks * len(leaves)


def test_default_lora_targets_cover_every_level_of_a_hierarchical_model(tmp_path: Path) -> None:
    model = load_model(_convert(FIXTURES / "0.16.0" / "hierarchical" / "inference-last.ckpt", tmp_path / "h.anc"))
    names = lora_targets(model, LoraConfig())
    owners = {n.split(".proc.")[0] for n in names}
    assert owners == {"model.processor", "model.down_level_processor.hidden_1",
                      "model.up_level_processor.hidden_1"}


def test_freeze_names_work_as_anemoi_training_submodules_to_freeze(tmp_path: Path) -> None:
    """anemoi-training freezes every module whose own name is in submodules_to_freeze, at any depth."""
    model = load_model(_convert(FIXTURES / "gnn" / "inference-last.ckpt", tmp_path / "g.anc"))
    assert match_modules(model, ["encoder", "processor"], "freeze.freeze") == ["model.encoder", "model.processor"]
    theirs = {n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in ("encoder", "processor")}
    assert theirs == {"model.encoder", "model.processor"}
