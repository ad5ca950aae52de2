"""Lightning training checkpoints written by a real Lightning Trainer, converted without
unpickling: weights under interface names, optimizer state by parameter name, hyper-parameters
and training state as JSON."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

import anemoi_ckpt
from anemoi_ckpt.convert import convert
from anemoi_ckpt.convert.optimizer_map import MappingError, embed
from tests.conftest import run_cli

C = 8  # channels; also the number of variables, so buffers and biases share shapes


class Normaliser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_norm_mul", torch.linspace(0.5, 2.0, C))
        self.register_buffer("_input_idx", torch.arange(C, dtype=torch.int32))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer_norm_attention = nn.LayerNorm(C)
        self.layer_norm_attention_dest = self.layer_norm_attention  # aliased, as in anemoi
        self.mlp = nn.Sequential(nn.Linear(C, 2 * C), nn.GELU(), nn.Linear(2 * C, C))


class Interface(nn.Module):
    """Named like anemoi's AnemoiModelInterface: pre_processors + model.{encoder,processor,decoder}."""

    def __init__(self) -> None:
        super().__init__()
        self.pre_processors = Normaliser()
        self.model = nn.Module()
        self.model.encoder = nn.Linear(C, C)
        self.model.processor = nn.Module()
        self.model.processor.proc = nn.ModuleList([Block(), Block()])
        self.model.decoder = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.encoder(x * self.pre_processors._norm_mul)
        for b in self.model.processor.proc:
            x = x + b.mlp(b.layer_norm_attention(x))
        return self.model.decoder(x)


class Forecaster(L.LightningModule):
    def __init__(self, config: dict, statistics: dict, freeze: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = Interface()
        self.register_buffer("loss_weights", torch.ones(C))  # LightningModule state outside model.
        for name in freeze:
            for p in self.model.model.get_submodule(name).parameters():
                p.requires_grad_(False)

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        (x,) = batch
        return ((self.model(x) - x) ** 2 * self.loss_weights).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # anemoi's configure_optimizers: trainable parameters only, in parameters() order
        return torch.optim.AdamW(filter(lambda p: p.requires_grad, self.parameters()), lr=1e-3,
                                 betas=(0.9, 0.95))


def _train(path: Path, freeze: tuple[str, ...] = ()) -> Forecaster:
    torch.manual_seed(0)
    config = {"training": {"submodules_to_freeze": list(freeze), "lr": 1e-3},
              "model": {"num_channels": C}}
    stats = {"mean": np.arange(C, dtype=np.float32), "stdev": np.ones(C, dtype=np.float64)}
    module = Forecaster(config, stats, freeze)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, C)), batch_size=4)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    trainer.save_checkpoint(path)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Forecaster]:
    path = tmp_path_factory.mktemp("lightning") / "last.ckpt"
    return path, _train(path)


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def test_weights_optimizer_and_state(trained: tuple[Path, Forecaster], tmp_path: Path) -> None:
    path, module = trained
    ref = torch.load(path, weights_only=False)  # the peer, on our own trusted file
    report = convert(path, tmp_path / "t.anc", keep_layout=True)
    assert report.format == "lightning" and report.kind == "training"
    assert report.verified == sum(report.tensors.values())
    with anemoi_ckpt.open(tmp_path / "t.anc") as ck:
        assert ck.kind == "training"
        weights = ck.tensors("weights")
        expected = {k[len("model."):]: v for k, v in ref["state_dict"].items() if k.startswith("model.")}
        assert sorted(weights) == sorted(expected)
        for name, t in expected.items():
            assert _bits(weights[name]) == _bits(t) and weights[name].dtype == t.dtype, name
        assert _bits(ck.tensors("module")["loss_weights"]) == _bits(ref["state_dict"]["loss_weights"])
        # optimizer state by parameter name: index i is the i-th trainable parameter
        trainable = [n[len("model."):] for n, p in module.named_parameters() if p.requires_grad]
        opt = ck.tensors("optimizer")
        state = ref["optimizer_states"][0]["state"]
        assert len(opt) == 3 * len(trainable)
        for i, name in enumerate(trainable):
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert _bits(opt[f"{name}.{key}"]) == _bits(state[i][key]), (name, key)
        doc = ck.document("training-state")
        assert doc["epoch"] == ref["epoch"] and doc["global_step"] == ref["global_step"] == 3
        assert doc["pytorch-lightning_version"] == ref["pytorch-lightning_version"]
        group = doc["optimizers"][0]["param_groups"][0]
        assert group["params"] == trainable and group["betas"] == [0.9, 0.95]
        assert doc["optimizers"][0]["names"] == "by-parameter"
        assert "loops" in doc and "callbacks" in doc
        hp = ck.document("hyper-parameters")
        assert hp["config"] == {"training": {"submodules_to_freeze": [], "lr": 1e-3},
                                "model": {"num_channels": C}}
        assert hp["statistics"]["mean"] == {"__tensor__": "hparams/statistics.mean"}
        stats = ck.tensors("hparams")
        assert stats["statistics.stdev"].dtype == torch.float64
        assert np.array_equal(stats["statistics.mean"].numpy(), np.arange(C, dtype=np.float32))
        assert ck.lineage.records[-1].parameters["source_format"] == "lightning"
        assert ck.verify().ok


def test_same_content_id_as_inference_twin(trained: tuple[Path, Forecaster], tmp_path: Path) -> None:
    path, module = trained
    torch.save(module.model, tmp_path / "inference-last.ckpt")  # what anemoi writes beside it
    a = convert(path, tmp_path / "a.anc", keep_layout=True)
    b = convert(tmp_path / "inference-last.ckpt", tmp_path / "b.anc", keep_layout=True)
    assert a.content_id == b.content_id


def test_frozen_submodule_mapped_by_shape(tmp_path: Path) -> None:
    path = tmp_path / "frozen.ckpt"
    module = _train(path, freeze=("encoder",))
    convert(path, tmp_path / "f.anc", keep_layout=True)
    ref = torch.load(path, weights_only=False)["optimizer_states"][0]["state"]
    trainable = [n[len("model."):] for n, p in module.named_parameters() if p.requires_grad]
    assert not any(n.startswith("model.encoder") for n in trainable)
    with anemoi_ckpt.open(tmp_path / "f.anc") as ck:
        opt = ck.tensors("optimizer")
        for i, name in enumerate(trainable):
            assert _bits(opt[f"{name}.exp_avg"]) == _bits(ref[i]["exp_avg"])


def test_ambiguous_mapping_refused_then_positional(tmp_path: Path) -> None:
    # Freezing one of two identical blocks: the optimizer cannot tell which one it trained,
    # unless the config's submodules_to_freeze says so. Without it: a clear refusal.
    path = tmp_path / "amb.ckpt"
    _train(path, freeze=("processor.proc.0",))
    ckpt = torch.load(path, weights_only=False)
    ckpt["hyper_parameters"]["config"]["training"]["submodules_to_freeze"] = []
    torch.save(ckpt, tmp_path / "amb2.ckpt")
    convert(path, tmp_path / "ok.anc", keep_layout=True)  # the config resolves it
    with pytest.raises(anemoi_ckpt.FormatError, match="more than one way.*--optimizer-positional"):
        convert(tmp_path / "amb2.ckpt", tmp_path / "x.anc", keep_layout=True)
    assert not (tmp_path / "x.anc").exists()
    convert(tmp_path / "amb2.ckpt", tmp_path / "p.anc", keep_layout=True, optimizer_positional=True)
    with anemoi_ckpt.open(tmp_path / "p.anc") as ck:
        assert "0.exp_avg" in ck.tensors("optimizer")
        assert ck.document("training-state")["optimizers"][0]["names"] == "positional"


def test_embed_is_unique_or_refused() -> None:
    cands = [("a", (2,)), ("b", (3,)), ("c", (2,))]
    assert embed([(2,), (3,)], cands) == ["a", "b"]
    assert embed([(3,), (2,)], cands) == ["b", "c"]
    with pytest.raises(MappingError, match="more than one way"):
        embed([(2,)], cands)
    with pytest.raises(MappingError, match="does not match"):
        embed([(4,)], cands)
    with pytest.raises(MappingError, match="only 3 candidate"):
        embed([None] * 4, cands)


def test_cli_json_and_dry_run(trained: tuple[Path, Forecaster], tmp_path: Path) -> None:
    path, _ = trained
    out = run_cli("convert", str(path), str(tmp_path / "c.anc"), "--dry-run", "--json", "--keep-layout")
    assert out.returncode == 0, out.stderr
    import json
    rep = json.loads(out.stdout)
    rep = rep[0] if isinstance(rep, list) else rep
    assert rep["format"] == "lightning" and rep["tensors"]["optimizer"] > 0
    assert rep["documents"] == ["hyper-parameters", "training-state"]
    assert not (tmp_path / "c.anc").exists()
