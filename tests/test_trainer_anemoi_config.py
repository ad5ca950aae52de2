"""The trainer's anemoi keys, checked without anemoi installed: ``data.dataset`` and its periods,
``rollout``, ``base_dtype``, the task a base chooses, and anemoi-style module names in globs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("yaml")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from anemoi_ckpt.trainer.config import ConfigError, load_config  # noqa: E402
from anemoi_ckpt.trainer.methods import glob_matches, match_modules  # noqa: E402
from anemoi_ckpt.trainer.tasks import choose_task  # noqa: E402

DATA = {"dataset": "x.zarr", "start": "2020-02-01", "end": "2020-02-10",
        "validation": {"start": "2020-02-15", "end": "2020-02-20"}}


def _cfg(**kw: Any) -> dict[str, Any]:
    return {"base": "b.anc", "max_steps": 1, **kw}


def _refusal(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(None, data=data)
    return exc.value.line()


def test_an_anemoi_data_section_validates() -> None:
    cfg = load_config(None, data=_cfg(data=DATA, rollout=2, base_dtype="bf16", method="lora",
                                      activation_checkpointing=True))
    assert cfg.data.dataset == "x.zarr" and cfg.data.validation.start == "2020-02-15"
    assert cfg.rollout == 2 and cfg.base_dtype == "bf16" and cfg.activation_checkpointing is True
    # a dict of open_dataset options is taken as it is
    cfg = load_config(None, data=_cfg(data={**DATA, "dataset": {"dataset": "x.zarr", "select": ["2t"]}}))
    assert cfg.data.dataset == {"dataset": "x.zarr", "select": ["2t"]}


@pytest.mark.parametrize("data,words", [
    ({**DATA, "validation": None}, "data.validation: give {start, end}"),
    ({**DATA, "variant": "global"}, "data.variant is an option of the built-in synthetic data"),
    ({**DATA, "n_samples": 10}, "data.n_samples is an option of the built-in synthetic data"),
    ({"start": "2020-01-01"}, "data.start is a period of data.dataset, and no dataset is given"),
    ({**DATA, "validation": {"start": "2020-02-15"}}, "data.validation.end"),
    ({**DATA, "validation": {"start": "a", "end": "b", "step": 1}}, "unknown key 'data.validation.step'"),
])
def test_bad_data_sections_are_one_line(data: dict[str, Any], words: str) -> None:
    assert words in _refusal(_cfg(data=data))


@pytest.mark.parametrize("extra,words", [
    ({"method": "full", "base_dtype": "bf16"}, "base_dtype bf16: method full trains every weight"),
    ({"method": "lora", "base_dtype": "bf16", "strategy": "fsdp"}, "base_dtype bf16 with strategy fsdp"),
    ({"rollout": 2}, "rollout: multi-step training needs an anemoi base and data.dataset"),
    ({"rollout": 0}, "rollout: Input should be greater than or equal to 1"),
    ({"base_dtype": "fp16"}, "base_dtype: Input should be 'fp32' or 'bf16'"),
])
def test_memory_and_rollout_keys_are_checked(extra: dict[str, Any], words: str) -> None:
    assert words in _refusal(_cfg(**extra))


def test_a_relative_dataset_path_is_found_next_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "x.zarr").mkdir()
    path = tmp_path / "cfgs" / "run.yaml"
    import yaml

    path.write_text(yaml.safe_dump(_cfg(data=DATA)))
    monkeypatch.chdir(tmp_path)  # x.zarr is not in the working folder: the config's folder is tried
    assert load_config(path).data.dataset == str(tmp_path / "cfgs" / "x.zarr")
    (tmp_path / "x.zarr").mkdir()  # found from the working folder first: kept as given
    assert load_config(path).data.dataset == "x.zarr"
    remote = load_config(path, ["data.dataset=s3://bucket/x.zarr"]).data.dataset
    assert remote == "s3://bucket/x.zarr"


def test_the_task_follows_the_base() -> None:
    anemoi = {"builder": "anemoi", "config": {}}
    reference = {"builder": "reference", "config": {}}
    assert choose_task(load_config(None, data=_cfg(data=DATA)), anemoi) == "anemoi"
    assert choose_task(load_config(None, data=_cfg()), reference) == "synthetic"
    with pytest.raises(ConfigError, match="the base is an anemoi model: give data.dataset"):
        choose_task(load_config(None, data=_cfg()), anemoi)
    with pytest.raises(ConfigError, match="data.dataset is for anemoi bases; this base is built by 'reference'"):
        choose_task(load_config(None, data=_cfg(data=DATA)), reference)


def test_globs_match_a_name_or_any_dotted_tail() -> None:
    assert glob_matches("model.processor", "processor")
    assert glob_matches("model.processor", "model.processor")
    assert glob_matches("model.processor.proc.0.mlp", "proc.*.mlp")
    assert not glob_matches("model.processor_graph_provider", "processor")
    assert not glob_matches("model.preprocessor", "processor")  # a tail starts at a dot

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.ModuleDict({"encoder": nn.Linear(2, 2), "processor": nn.Sequential(nn.Linear(2, 2)),
                                        "processor_graph_provider": nn.Linear(2, 2)})

    torch.manual_seed(0)
    # anemoi-training's submodules_to_freeze: a module's own name, at any depth
    assert match_modules(Toy(), ["encoder", "processor"], "freeze.freeze") == ["model.encoder", "model.processor"]
