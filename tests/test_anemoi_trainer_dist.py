"""Issue 17: resume, DDP and FSDP keep working with an anemoi model (2 CPU processes, gloo).

The base is the genuine anemoi-training 0.17.1 GraphTransformer fixture (GraphTransformer mappers,
Transformer processor) converted to ``.anc``; the data a zarr made by the real ``anemoi-datasets
create``; the loss anemoi-training's forecast loss. What is proved:

- resume: N steps, then resumed to N+M, equals N+M in one go bit for bit (weights, optimizer state,
  outputs), for lora (with LoRA dropout: the RNG state is carried) and freeze, and for lora with a
  bf16 frozen base and anemoi's activation checkpointing switched on;
- DDP: 2 processes (the CLI, Lightning's launcher re-executing it for rank 1) equal 1 process, and
  the DDP training file resumed by 1 process equals the one-go run;
- FSDP2: 2 processes equal 1 for ``method: full`` - every parameter trained and sharded (the
  processor blocks, children of a ``ModuleList``, as their own units; the mappers, inside
  ``ModuleDict``s, with the rest in the root unit) - with the mappers' tied layer norm
  (``layer_norm_attention_dest`` is ``layer_norm_attention``) written as one tensor and an alias,
  as a single process writes it; and a single-process training file resumed by FSDP equals the
  one-go run; ``base_dtype: bf16`` with ``strategy: fsdp`` is refused with one line before
  anything starts.

Determinism: on CPU the model's ops (torch-geometric's scatter/segment reductions, attention,
linear layers) are deterministic: a rerun is bit-identical, which the resume tests rely on. Two
processes add the two halves' gradients (the all-reduce) where one process sums the whole batch:
the same gradient up to float rounding, so the results are compared at 1e-6 - except for the
GraphTransformer mappers' ``lin_key.bias`` under ``method: full``. Its gradient is zero in exact
arithmetic (the key bias adds ``q_i . b`` to every score of node ``i``'s softmax, which does not
change it), so what is computed is rounding noise (about 1e-11), and Adam divides it by its own
running size (``m / (sqrt(v) + eps)``, ``eps`` 1e-8): noise, not gradient, moves it, and two
processes' noise moves it differently (2.8e-5 after 4 steps here). Such parameters - told apart
by the single-process run's own optimizer state, ``sqrt(exp_avg_sq) < eps``, and checked to be
exactly those two biases - are compared at 1e-4.

Runs in ``make test-anemoi`` (about 4 minutes on 2 cores); skipped without gloo.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, require_module

require_module("anemoi.models", reason="needs anemoi-models (make test-anemoi)")
require_module("anemoi.datasets", reason="needs anemoi-datasets (make test-anemoi)")
require_module("lightning", reason="needs lightning (the trainer extra)")
require_module("peft", reason="needs peft (the trainer extra)")

import torch  # noqa: E402
import yaml  # noqa: E402

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.convert import convert  # noqa: E402
from anemoi_ckpt.trainer.config import ConfigError, load_config  # noqa: E402
from anemoi_ckpt.trainer.run import RunResult, train  # noqa: E402
from tests.anemoi_datasets import session_zarr  # noqa: E402

if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available: no 2-process CPU runs",
                allow_module_level=True)

GT = FIXTURES / "legacy" / "anemoi" / "graphtransformer" / "last.ckpt"
# 2020-02-01..04 at 6h with multistep_input 2: 14 windows, 3 batches of 4 an epoch; N=4 stops
# mid-epoch 1 and the resumed run goes on mid-epoch, through the loader's saved position
STEPS, MORE = 4, 6
ATOL = 1e-6
NOISE_ATOL = 1e-4  # parameters whose gradient is rounding noise (module docstring)
FREEZE = {"freeze": {"train": ["processor"]}}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "gt.anc"
    convert(GT, path)
    return path


@pytest.fixture(scope="module")
def zarr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_zarr(tmp_path_factory, dynamics="finetune")


def _config(base: Path, zarr: Path, method: str, dropout: float = 0.0, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "base": str(base), "method": method, "max_steps": STEPS,
        "data": {"dataset": str(zarr), "start": "2020-02-01", "end": "2020-02-04",
                 "validation": {"start": "2020-02-19", "end": "2020-02-20"}, "batch_size": 4},
        "optimizer": {"lr": 1e-3, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 1, "total_steps": 10},
        "lora": {"r": 4, "alpha": 8, "dropout": dropout}, "output": {"dir": "out", "name": "run"}}
    if method == "freeze":
        cfg.update(FREEZE)
    cfg.update(over)
    return cfg


def _single(cfg: dict[str, Any], out: Path, steps: int, resume: str | Path | None = None) -> RunResult:
    run = load_config(None, data={**cfg, "max_steps": steps, "output": {"dir": str(out), "name": "run"}})
    return train(run, resume=None if resume is None else str(resume), accelerator="cpu", durable=False)


def _sharded(cfg: dict[str, Any], out: Path, strategy: str, steps: int = STEPS,
             resume: str | Path | None = None) -> tuple[Path, Path]:
    """A 2-process run through the CLI, as a user starts one; returns (output, training file)."""
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    args = [sys.executable, "-m", "anemoi_ckpt", "finetune", str(config), "--set", f"output.dir={out}",
            "--set", f"strategy={strategy}", "--set", "devices=2", "--set", f"max_steps={steps}"]
    if resume is not None:
        args += ["--resume", str(resume)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=out.parent,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting with 2 processes" in res.stderr + res.stdout  # really two ranks
    assert sorted(p.name for p in out.iterdir()) == ["run-train.anc", "run.anc"]  # rank 0 alone wrote
    return out / "run.anc", out / "run-train.anc"


def _noise_parameters(training_file: str | Path) -> set[str]:
    """Parameters whose gradient was rounding noise in a run: Adam's ``sqrt(exp_avg_sq) < eps``."""
    with anemoi_ckpt.open(training_file) as ck:
        eps = ck.document("training-state")["optimizers"][0]["param_groups"][0]["eps"]
        return {n[:-len(".exp_avg_sq")] for n, t in ck.tensors("optimizer").items()
                if n.endswith(".exp_avg_sq") and float(t.max()) < eps ** 2}


def _assert_same(one: str | Path, two: str | Path, atol: float = 0.0, noise: Collection[str] = ()) -> None:
    """Same sections, tensor names in the same order, dtypes, shapes and aliases; float values
    within ``atol`` (0: bit for bit; NOISE_ATOL for the weights in ``noise``); the same step and
    data position for a training file."""
    with anemoi_ckpt.open(one) as a, anemoi_ckpt.open(two) as b:
        assert a.kind == b.kind
        assert a.tensor_sections() == b.tensor_sections()
        for section in a.tensor_sections():
            ta, tb = a.tensors(section), b.tensors(section)
            assert list(ta) == list(tb), section
            sa = next(s for s in a.manifest.sections if s.name == section)
            sb = next(s for s in b.manifest.sections if s.name == section)
            assert sa.tensors.aliases == sb.tensors.aliases, section  # tied weights stay tied
            for name in ta:
                x, y = ta[name], tb[name]
                assert (x.dtype, x.shape) == (y.dtype, y.shape), f"{section}/{name}"
                if atol and x.is_floating_point():
                    tol = NOISE_ATOL if section == "weights" and name in noise else atol
                    diff = float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
                    assert diff <= tol, f"{section}/{name}: differs by {diff:.3g} > {tol:g}"
                else:
                    assert torch.equal(x, y), f"{section}/{name}"
        if a.kind == "training":
            da, db = a.document("training-state"), b.document("training-state")
            assert da["global_step"] == db["global_step"]
            loader = lambda d: d["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # noqa: E731
            assert loader(da) == loader(db)  # the global batch position
            assert [o["param_groups"][0]["params"] for o in da["optimizers"]] == \
                [o["param_groups"][0]["params"] for o in db["optimizers"]]


def _resume_equals_one_go(cfg: dict[str, Any], tmp: Path) -> RunResult:
    """MORE steps in one go == STEPS resumed to MORE, bit for bit."""
    one_go = _single(cfg, tmp / "one-go", MORE)
    first = _single(cfg, tmp / "first", STEPS).training_file
    resumed = _single(cfg, tmp / "resumed", MORE, resume=first)
    assert one_go.steps == resumed.steps == MORE
    assert resumed.resume == {"fresh": [], "dropped": []}
    _assert_same(one_go.training_file, resumed.training_file)
    _assert_same(one_go.output, resumed.output)
    assert resumed.train_loss == one_go.train_loss and resumed.val_loss == one_go.val_loss
    return one_go


def _resume_close(cfg: dict[str, Any], tmp: Path, first: Path, noise: Collection[str] = ()) -> None:
    """A sharded run's training file resumed by one process to MORE steps equals MORE steps in one
    go within ATOL (the sharded file may differ from a single process's by rounding)."""
    one_go = _single(cfg, tmp / "one-go", MORE)
    resumed = _single(cfg, tmp / "resumed", MORE, resume=first)
    assert resumed.steps == MORE and resumed.resume == {"fresh": [], "dropped": []}
    _assert_same(one_go.training_file, resumed.training_file, ATOL, noise)
    _assert_same(one_go.output, resumed.output, ATOL, noise)


# --- 1. exact resume, single process ---------------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_resume_is_exact(base: Path, zarr: Path, tmp_path: Path, method: str) -> None:
    # LoRA dropout 0.1: the masks after the resume come from the RNG state the training file keeps
    one_go = _resume_equals_one_go(_config(base, zarr, method, dropout=0.1), tmp_path)
    with anemoi_ckpt.open(one_go.training_file) as ck:
        trained = ck.document("training-state")["trainable"]
    # what trained: the LoRA tensors (in the PEFT wrapper), or the processor alone (freeze)
    assert trained and all((".lora_" in n) if method == "lora" else n.startswith("model.processor.")
                           for n in trained)


@pytest.mark.timeout(300)
def test_resume_is_exact_with_bf16_base_and_activation_checkpointing(base: Path, zarr: Path,
                                                                       tmp_path: Path) -> None:
    # anemoi-models builds its mappers and processor with checkpointing on; true keeps it on, said
    cfg = _config(base, zarr, "lora", dropout=0.1, base_dtype="bf16", activation_checkpointing=True)
    one_go = _resume_equals_one_go(cfg, tmp_path)
    with anemoi_ckpt.open(one_go.training_file) as ck:
        dtype = {n: t.dtype for n, t in ck.tensors("weights").items()}
    # the frozen base was held in bf16 (the training file stores the weights as trained): the
    # LoRA-wrapped Linear layers' base weights bf16, the LoRA tensors fp32
    base_linear = [n for n in dtype if n.endswith(".base_layer.weight")]
    assert base_linear and all(dtype[n] == torch.bfloat16 for n in base_linear)
    assert all(dtype[n] == torch.float32 for n in dtype if ".lora_" in n)


# --- 2. DDP --------------------------------------------------------------------------------------
@pytest.mark.timeout(400)
def test_ddp_two_processes_equal_one_and_resume_single(base: Path, zarr: Path, tmp_path: Path) -> None:
    cfg = _config(base, zarr, "lora")  # no dropout: 2 processes draw other masks than 1 would
    one = _single(cfg, tmp_path / "single", STEPS)
    output, training = _sharded(cfg, tmp_path / "ddp", "ddp")
    _assert_same(one.output, output, ATOL)
    _assert_same(one.training_file, training, ATOL)
    # the DDP training file resumed by one process == MORE steps in one go
    _resume_close(cfg, tmp_path, training)


# --- 3. FSDP2 ------------------------------------------------------------------------------------
@pytest.mark.timeout(400)
def test_fsdp_two_processes_equal_one(base: Path, zarr: Path, tmp_path: Path) -> None:
    cfg = _config(base, zarr, "full")
    one = _single(cfg, tmp_path / "single", STEPS)
    output, training = _sharded(cfg, tmp_path / "fsdp", "fsdp")
    for path in (output, training):
        with anemoi_ckpt.open(path) as ck:
            assert ck.verify().ok
    noise = _noise_parameters(one.training_file)
    assert noise == {"model.encoder.0.proc.lin_key.bias", "model.decoder.0.proc.lin_key.bias"}
    _assert_same(one.output, output, ATOL, noise)
    _assert_same(one.training_file, training, ATOL, noise)
    with anemoi_ckpt.open(training) as ck:
        aliases = next(s for s in ck.manifest.sections if s.name == "weights").tensors.aliases
        # the tied layer norm of both GraphTransformer mappers, trained as one parameter
        assert aliases["model.encoder.0.proc.layer_norm_attention_dest.weight"] == \
            "model.encoder.0.proc.layer_norm_attention.weight"
        optimized = ck.document("training-state")["optimizers"][0]["state"]
        assert "model.encoder.0.proc.layer_norm_attention.weight" in optimized
        assert "model.encoder.0.proc.layer_norm_attention_dest.weight" not in optimized
    # and the other way: the single-process training file resumed by FSDP (the full state loaded on
    # every rank and sharded there; the tied layer norm loaded once, by its first name) == MORE
    # steps in one go. (A 1-process resume of the FSDP file needs no test of its own: that file
    # was just shown to be the single-process one, aliases and all.)
    one_go = _single(cfg, tmp_path / "one-go", MORE)
    output2, training2 = _sharded(cfg, tmp_path / "fsdp-resumed", "fsdp", steps=MORE,
                                  resume=one.training_file)
    _assert_same(one_go.training_file, training2, ATOL, noise)
    _assert_same(one_go.output, output2, ATOL, noise)


def test_fsdp_with_bf16_base_is_refused(base: Path, zarr: Path, tmp_path: Path) -> None:
    cfg = _config(base, zarr, "lora", base_dtype="bf16")
    with pytest.raises(ConfigError) as e:
        load_config(None, data={**cfg, "strategy": "fsdp", "devices": 2})
    assert "\n" not in str(e.value) and "base_dtype bf16 with strategy fsdp" in str(e.value)
    # through the CLI: one error line, exit 2, no process launched, nothing written
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "anemoi_ckpt", "finetune", str(config), "--set",
                          "strategy=fsdp", "--set", "devices=2", "--set", f"output.dir={tmp_path / 'out'}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    errors = [ln for ln in res.stderr.splitlines() if "error" in ln.lower() or "Traceback" in ln]
    assert res.returncode == 2 and len(errors) == 1, res.stderr
    assert errors[0].startswith("anemoi-ckpt: error: ") and "strategy fsdp" in errors[0]
    assert "Starting with 2 processes" not in res.stderr + res.stdout
    assert not (tmp_path / "out").exists()
