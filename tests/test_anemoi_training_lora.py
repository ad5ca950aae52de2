"""Issue 18, LoRA inside anemoi-training: the ``LoRA`` callback and the ``LoRAModifier`` stage.

Every run is the real ``anemoi-training train`` console script (tests/anemoi_training_run.py) of
the pinned release on a zarr made by ``anemoi-datasets create``, started from the genuine base -
anemoi-training 0.17.1's GraphTransformer inference checkpoint converted to ``.anc`` - with
``WarmStart``, and the callbacks added through ``diagnostics.callbacks`` as a user would.
``Probe``, one more callback in the list, records from inside the run what the optimizer got, the
callbacks' records and the trained model's prediction on a fixed batch.

Proved: only the adapters train (the optimizer holds exactly the LoRA parameters; every base
tensor of the run's ``last.ckpt`` is bit for bit the base's); the adapter ``.anc`` AncCheckpoint
wrote, merged into the base with ``anemoi-ckpt merge``, predicts as the run's own model; the
run's pickled inference checkpoint is a plain anemoi model (no PEFT class) with the adapter merged
in, predicting the same; a full resume from the LoRA run's ``last.ckpt`` restores the adapters
and the optimizer state and trains on; a run whose checkpoint pipeline has the ``LoRAModifier``
stage trains the same parameters, with ``modifiers_applied`` saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import REPO, require_module

require_module("anemoi.training", reason="needs anemoi-training (make test-anemoi)")
require_module("anemoi.models", reason="needs anemoi-models (make test-anemoi)")
require_module("peft", reason="needs peft (make test-anemoi)")
pl = require_module("pytorch_lightning", reason="needs pytorch_lightning (make test-anemoi)")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.anemoi import load_model  # noqa: E402
from anemoi_ckpt.anemoi.training.lora import (LoRA, LoRAModifier, adapter_state, has_lora,  # noqa: E402
                                              inject, lora_config, merged_model)
from anemoi_ckpt.anemoi.training.source import WarmStart  # noqa: E402
from anemoi_ckpt.trainer.config import ConfigError  # noqa: E402
from tests.anemoi_datasets import ANEMOI_FIXTURES  # noqa: E402
from tests.anemoi_helpers import random_batch  # noqa: E402
from tests.anemoi_training_run import run_anemoi_training  # noqa: E402

BASE_INFERENCE = ANEMOI_FIXTURES / "graphtransformer" / "inference-last.ckpt"
PKG = "anemoi_ckpt.anemoi.training"
R, ALPHA = 4, 8
#: the processor of the GraphTransformer fixture: 2 Transformer blocks x (q, k, v, projection, 2 MLP)
N_TARGETS = 12
BATCH_SEED = 7


class Probe(pl.Callback):
    """Runs inside ``anemoi-training train``: writes to ``out`` what the optimizer trains and the
    records of the LoRA and WarmStart callbacks (``trainable.json``), the adapters as training
    starts, and at the end the model's prediction on a fixed random batch."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        optimized = [names[id(p)] for g in trainer.optimizers[0].param_groups for p in g["params"]]
        (self.out / "trainable.json").write_text(json.dumps({
            "optimizer": optimized,
            "requires_grad": [n for n, p in pl_module.named_parameters() if p.requires_grad],
            "lora": [cb.record for cb in trainer.callbacks if isinstance(cb, LoRA)],
            "warm_start": [cb.record for cb in trainer.callbacks if type(cb).__name__ == "WarmStart"]}))
        if has_lora(pl_module.model):
            save_file(adapter_state(pl_module.model)[0], self.out / "start-adapter.safetensors")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        model = pl_module.model
        was_training = model.training
        model.eval()
        out = _predict(model)
        model.train(was_training)
        save_file({k: v.contiguous() for k, v in out.items()}, self.out / "prediction.safetensors")


def _callbacks(*entries: dict[str, Any]) -> dict[str, Any]:
    """``extra_config`` giving the run's ``diagnostics.callbacks`` (what a user's YAML holds)."""
    return {"diagnostics": {"callbacks": list(entries)}}


def _probe(out: Path) -> dict[str, Any]:
    return {"_target_": "tests.test_anemoi_training_lora.Probe", "out": str(out)}


def _lora() -> dict[str, Any]:
    return {"_target_": f"{PKG}.LoRA", "r": R, "alpha": ALPHA}


def _predict(model: Any) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.predict_step(random_batch(model, BATCH_SEED))


def _seen(probe: Path) -> dict[str, Any]:
    return json.loads((probe / "trainable.json").read_text())


def _cli(*args: str) -> str:
    """An ``anemoi-ckpt`` command of this venv (convert never unpickles); its stdout."""
    return subprocess.run([str(Path(sys.executable).parent / "anemoi-ckpt"), *args], check=True,
                          capture_output=True, text=True, timeout=300).stdout


def _convert(src: Path, dst: Path) -> Path:
    _cli("convert", str(src), str(dst))
    return dst


def _assert_predicts(model: Any, expected: dict[str, torch.Tensor], rtol: float = 1e-5) -> None:
    got = _predict(model)
    assert sorted(got) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=rtol)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("anemoi-training-lora")


@pytest.fixture(scope="module", autouse=True)
def _importable_probe() -> Any:
    """The runs import ``Probe`` from this module: the repository on their PYTHONPATH."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        yield


@pytest.fixture(scope="module")
def base_anc(root: Path) -> Path:
    """The genuine base, anemoi-training 0.17.1's inference checkpoint, as an ``.anc``."""
    return _convert(BASE_INFERENCE, root / "base.anc")


@pytest.fixture(scope="module")
def lora_run(root: Path, base_anc: Path) -> Any:
    """The LoRA run: 2 epochs x 2 steps from the base ``.anc`` (WarmStart), r=4, default targets,
    with AncCheckpoint writing the ``.anc`` twins and the adapter."""
    probe = root / "lora-probe"
    run = run_anemoi_training(root / "lora", extra_config=_callbacks(
        {"_target_": f"{PKG}.WarmStart", "source": str(base_anc)}, _lora(),
        {"_target_": f"{PKG}.AncCheckpoint"}, _probe(probe)))
    return run, probe


def test_only_the_adapters_train(lora_run: Any, base_anc: Path, root: Path) -> None:
    run, probe = lora_run
    seen = _seen(probe)
    # the optimizer anemoi-training built holds the LoRA A/B of each default target, nothing else
    assert sorted(seen["optimizer"]) == sorted(seen["requires_grad"])
    assert len(seen["optimizer"]) == 2 * N_TARGETS
    assert all(".lora_A.default." in n or ".lora_B.default." in n for n in seen["optimizer"])
    record = seen["lora"][0]
    assert record["type"] == "lora" and record["r"] == R and len(record["targets"]) == N_TARGETS
    assert all(t.startswith("model.processor.proc.") for t in record["targets"])

    # the run's last.ckpt (read without unpickling): every base tensor is the base's, bit for bit,
    # under PEFT's name for an adapted linear; the adapters moved off their start (B starts at 0);
    # the optimizer state is the adapters' alone
    with anemoi_ckpt.open(_convert(run.last, root / "lora-last.anc")) as last, anemoi_ckpt.open(base_anc) as base:
        trained, ref = last.tensors("weights"), base.tensors("weights")
        lora = sorted(k for k in trained if ".lora_" in k)
        assert len(lora) == 2 * N_TARGETS
        plain = {k.replace(".base_layer.", "."): k for k in trained if k not in lora}
        assert sorted(plain) == sorted(ref)
        assert [n for n, k in plain.items() if not torch.equal(trained[k], ref[n])] == []
        assert all(trained[k].abs().max() > 0 for k in lora if ".lora_B." in k)
        assert {k.rsplit(".", 1)[0] for k in last.tensors("optimizer")} == set(lora)


def test_adapter_merged_into_the_base_predicts_as_the_run(lora_run: Any, base_anc: Path, root: Path) -> None:
    run, probe = lora_run
    adapter_path = run.checkpoint_dir / "adapter-last.anc"  # AncCheckpoint's
    with anemoi_ckpt.open(adapter_path) as adapter, anemoi_ckpt.open(base_anc) as base:
        assert adapter.kind == "adapter"
        assert adapter.metadata.model_extra["adapter"]["base_content_id"] == base.content_id
        assert adapter.metadata.model_extra["peft_config"]["r"] == R
        assert len(adapter.tensors("weights")) == 2 * N_TARGETS
    merged = root / "merged.anc"
    _cli("merge", str(base_anc), str(adapter_path), "-o", str(merged))
    expected = load_file(probe / "prediction.safetensors")
    _assert_predicts(load_model(merged), expected)
    # not trivially so: the base alone predicts otherwise
    base_out = _predict(load_model(base_anc))
    assert any((base_out[n] - expected[n]).abs().max() > 1e-3 for n in expected)


def test_inference_checkpoint_is_the_merged_plain_model(lora_run: Any) -> None:
    run, probe = lora_run
    scan = _cli("scan", "--json", str(run.inference_last))
    assert "peft" not in scan and "AnemoiModelInterface" in scan
    expected = load_file(probe / "prediction.safetensors")
    # anemoi-training's pickle, loaded as anemoi-inference does (torch.load) and as converted
    # without unpickling by AncCheckpoint
    pickled = torch.load(run.inference_last, map_location="cpu", weights_only=False)
    assert not has_lora(pickled)
    _assert_predicts(pickled, expected)
    converted = _predict(load_model(run.checkpoint_dir / "inference-last.anc"))
    assert all(torch.equal(converted[n], v) for n, v in _predict(pickled).items())


@pytest.fixture(scope="module")
def resumed(lora_run: Any, root: Path) -> Any:
    """The LoRA run resumed from its ``last.ckpt`` (Lightning's full restore) for a third epoch."""
    probe = root / "resume-probe"
    run = run_anemoi_training(root / "resume", resume_from=lora_run[0].last,
                              overrides=["training.max_epochs=3", "training.max_steps=6"],
                              extra_config=_callbacks(_lora(), {"_target_": f"{PKG}.AncCheckpoint"},
                                                      _probe(probe)))
    return run, probe


def test_resume_from_last_ckpt_continues_the_lora_run(lora_run: Any, resumed: Any, root: Path) -> None:
    (run, _), (again, probe) = lora_run, resumed
    assert "anemoi-by_epoch-epoch_002-step_000006.ckpt" in again.files()
    with anemoi_ckpt.open(_convert(run.last, root / "a.anc")) as before, \
            anemoi_ckpt.open(_convert(again.last, root / "b.anc")) as after:
        # the adapters the resumed run started from are the saved ones, bit for bit
        start = load_file(probe / "start-adapter.safetensors")
        saved = {k: v for k, v in before.tensors("weights").items() if ".lora_" in k}
        assert len(start) == len(saved) == 2 * N_TARGETS
        for key, tensor in start.items():
            name = key.removeprefix("base_model.model.").replace(".lora_A.", ".lora_A.default.") \
                      .replace(".lora_B.", ".lora_B.default.")
            assert torch.equal(tensor, saved[name]), name
        # it trained on from there: AdamW's step count continued (4 -> 6), the adapters moved,
        # the base did not
        steps = {float(v) for k, v in after.tensors("optimizer").items() if k.endswith(".step")}
        assert steps == {6.0}
        w0, w1 = before.tensors("weights"), after.tensors("weights")
        assert sorted(w0) == sorted(w1)
        for key in w0:
            assert torch.equal(w0[key], w1[key]) == (".lora_" not in key), key


def test_resume_from_last_anc_is_resume_from_last_ckpt(lora_run: Any, resumed: Any, root: Path) -> None:
    """AncCheckpoint's training ``.anc`` of the LoRA run (PEFT names, the adapters' optimizer state)
    resumes it exactly as its ``last.ckpt`` does."""
    (run, _), (again, _) = lora_run, resumed
    from_anc = run_anemoi_training(root / "resume-anc", resume_from=run.checkpoint_dir / "last.anc",
                                   overrides=["training.max_epochs=3", "training.max_steps=6"],
                                   extra_config=_callbacks(_lora(), {"_target_": f"{PKG}.AncCheckpoint"}))
    with anemoi_ckpt.open(from_anc.checkpoint_dir / "last.anc") as a, \
            anemoi_ckpt.open(again.checkpoint_dir / "last.anc") as b:
        for section in ("weights", "optimizer"):
            ta, tb = a.tensors(section), b.tensors(section)
            assert sorted(ta) == sorted(tb)
            assert [k for k in ta if not torch.equal(ta[k], tb[k])] == []


def test_modifier_stage_trains_the_same_parameters(lora_run: Any, base_anc: Path, root: Path) -> None:
    """The stage in the checkpoint pipeline WarmStart runs (the pinned release ships the pipeline
    but does not run it), the LoRA callback beside it only to merge the inference pickles."""
    _, lora_probe = lora_run
    probe = root / "modifier-probe"
    stage = {"_target_": f"{PKG}.LoRAModifier", "r": R, "alpha": ALPHA}
    run = run_anemoi_training(root / "modifier", overrides=["training.max_epochs=1", "training.max_steps=1"],
                              extra_config=_callbacks({"_target_": f"{PKG}.WarmStart", "source": str(base_anc),
                                                       "stages": [stage]}, _lora(), _probe(probe)))
    seen, expected = _seen(probe), _seen(lora_probe)
    applied = seen["warm_start"][0]["modifiers_applied"]
    assert [a["type"] for a in applied] == ["lora"]
    assert applied[0]["targets"] == expected["lora"][0]["targets"]
    assert applied[0]["adapter_params"] == expected["lora"][0]["adapter_params"]
    assert sorted(seen["optimizer"]) == sorted(expected["optimizer"])
    assert seen["lora"][0]["skipped"]  # the callback found the adapters in and added none
    assert "peft" not in _cli("scan", "--json", str(run.inference_last))


def test_modifier_takes_the_task_or_its_interface(base_anc: Path) -> None:
    """Releases that run the pipeline may give it the task (a Lightning module holding the
    interface as ``.model``) or the interface; both are adapted in place and recorded."""
    from anemoi.training.checkpoint import CheckpointContext, CheckpointPipeline

    class Task(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = load_model(base_anc)

    for model in (Task(), load_model(base_anc)):
        pipeline = CheckpointPipeline([LoRAModifier(r=R, alpha=ALPHA)], async_execution=False)
        context = pipeline.execute_sync(CheckpointContext(model=model))
        interface = model.model if isinstance(model, Task) else model
        assert context.model is model and has_lora(interface)
        [record] = context.metadata["modifiers_applied"]
        assert record["type"] == "lora" and len(record["targets"]) == N_TARGETS
        trained = [n for n, p in interface.named_parameters() if p.requires_grad]
        assert len(trained) == 2 * N_TARGETS and all(".lora_" in n for n in trained)


@pytest.mark.parametrize("variant", [{}, {"use_rslora": True}, {"use_dora": True}])
def test_merged_model_predicts_as_the_adapted_model(base_anc: Path, variant: dict[str, bool]) -> None:
    """What the inference checkpoints hold: PEFT's merge on a copy, the training model untouched."""
    model = load_model(base_anc)
    inject(model, lora_config(r=R, alpha=ALPHA, **variant))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adapters away from their start (B = 0 would make the merge a no-op)
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = _predict(model)
    merged = merged_model(model)
    assert type(merged).__name__ == "AnemoiModelInterface" and not has_lora(merged)
    assert sorted(merged.state_dict()) == sorted(load_model(base_anc).state_dict())  # the base's names
    # float32 rounding only (a wrong merge is off by O(1)): the adapters here are pushed much
    # further than a short run moves them, and DoRA's norm takes its own rounding
    _assert_predicts(merged, expected, rtol=1e-4)
    assert has_lora(model) and all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    _assert_predicts(model, expected)


def test_bad_settings_are_one_line_refusals(base_anc: Path) -> None:
    with pytest.raises(ConfigError, match=r"LoRA: r: .*greater than or equal to 1"):
        LoRA(r=0)
    with pytest.raises(ConfigError, match=r"LoRAModifier: dropout"):
        LoRAModifier(dropout=1.5)
    model = load_model(base_anc)
    with pytest.raises(ConfigError, match=r"lora.targets: glob 'no_such_layer\*' matches no module"):
        inject(model, lora_config(targets=["no_such_layer*"]))
    with pytest.raises(ConfigError, match=r"'model.processor.proc.0.mlp' is a \w+, not a Linear layer"):
        inject(model, lora_config(targets=["proc.0.mlp"]))
    assert not has_lora(model)  # a refused injection leaves the model as it was
    with pytest.raises(ConfigError, match="not an AnemoiModelInterface"):
        LoRA().setup(None, torch.nn.Linear(2, 2), "fit")
    lora = LoRA()
    trainer = SimpleNamespace(callbacks=[lora, WarmStart(source=str(base_anc))])
    with pytest.raises(ConfigError, match="lists WarmStart after LoRA"):
        lora.setup(trainer, SimpleNamespace(model=model), "fit")
    assert not has_lora(model)
    assert merged_model(model) is model  # nothing to merge
