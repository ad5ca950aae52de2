"""Sharded training on 2 CPU processes (gloo): ``strategy: ddp`` (Lightning's DDPStrategy) and
``strategy: fsdp`` (FSDP2 ``fully_shard`` through Lightning's ModelParallelStrategy), launched as a
user would - ``python -m anemoi_ckpt finetune CONFIG --set strategy=... --set devices=2`` - so
Lightning's own launcher re-executes the command for rank 1.

Each rank trains on a disjoint half of every global batch, so a 2-process run equals a
single-process one with the same config (up to float rounding of the gradient all-reduce: checked to
1e-6). The files are written once, by rank 0, with the gathered full state: same tensor names,
dtypes and shapes as a single-process run, and resumable by either.

These tests run in the normal suite (about 2 minutes on 2 cores); they skip, with the reason shown
by ``-ra``, only where torch.distributed or gloo is unavailable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("peft")

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.builders import build_model, model_spec  # noqa: E402
from anemoi_ckpt.trainer.config import ConfigError, load_config  # noqa: E402
from anemoi_ckpt.trainer.run import train  # noqa: E402

if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available: no 2-process CPU runs",
                allow_module_level=True)

TINY = {"size": "tiny", "channels": 8, "layers": 2, "heads": 2, "n_lat": 4, "n_lon": 8, "n_vars": 3}
STEPS, MORE = 4, 6   # 3 batches an epoch: 4 stops mid-epoch 1
ATOL = 1e-6


def _config(base: Path, method: str) -> dict[str, Any]:
    # dropout 0: the two processes draw other dropout masks than one process would
    return {"base": str(base), "method": method, "max_steps": STEPS,
            "data": {"n_samples": 12, "batch_size": 4, "val_samples": 4},
            "optimizer": {"lr": 1e-2, "weight_decay": 0.01},
            "schedule": {"name": "cosine", "warmup_steps": 1, "total_steps": 10},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "output": {"dir": "out", "name": "run"}}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "base.anc"
    torch.manual_seed(0)
    model = build_model({"builder": "reference", "config": TINY})
    anemoi_ckpt.save(path, model.state_dict(), metadata={"model": model_spec(model)})
    return path


def _single(base: Path, out: Path, method: str, steps: int = STEPS, resume: str | None = None) -> Any:
    cfg = load_config(None, data={**_config(base, method), "max_steps": steps,
                                  "output": {"dir": str(out), "name": "run"}})
    return train(cfg, resume=resume, accelerator="cpu", durable=False)


def _sharded(base: Path, out: Path, method: str, strategy: str, resume: str | None = None,
             steps: int = STEPS) -> tuple[Path, Path]:
    """A 2-process run through the CLI; returns (output, training file)."""
    import yaml

    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(_config(base, method)))
    args = [sys.executable, "-m", "anemoi_ckpt", "finetune", str(config), "--set", f"output.dir={out}",
            "--set", f"strategy={strategy}", "--set", "devices=2", "--set", f"max_steps={steps}"]
    if resume:
        args += ["--resume", resume]
    res = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=out.parent,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting with 2 processes" in res.stderr + res.stdout  # really two ranks
    # rank 0 alone writes, atomically: the two files, no temporary left by either rank
    assert sorted(p.name for p in out.iterdir()) == ["run-train.anc", "run.anc"]
    return out / "run.anc", out / "run-train.anc"


def _assert_same_files(one: str | Path, two: str | Path, exact_meta: bool = True) -> None:
    """Same tensors (names, dtypes, shapes) in every section; values within ATOL."""
    with anemoi_ckpt.open(one) as a, anemoi_ckpt.open(two) as b:
        assert a.kind == b.kind
        assert set(a.tensor_sections()) == set(b.tensor_sections())
        for section in a.tensor_sections():
            ta, tb = a.tensors(section), b.tensors(section)
            assert list(ta) == list(tb), section
            for name in ta:
                x, y = ta[name], tb[name]
                assert (x.dtype, x.shape) == (y.dtype, y.shape), f"{section}/{name}"
                if x.is_floating_point():
                    torch.testing.assert_close(y, x, atol=ATOL, rtol=0, msg=f"{section}/{name}")
                else:
                    assert torch.equal(x, y), f"{section}/{name}"
        if a.kind == "training":
            da, db = a.document("training-state"), b.document("training-state")
            assert da["global_step"] == db["global_step"]
            loader = lambda d: d["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # noqa: E731
            assert loader(da) == loader(db)  # the global batch position, not a per-rank one
            assert [o["names"] for o in da["optimizers"]] == [o["names"] for o in db["optimizers"]] == ["by-parameter"]
            assert da["optimizers"][0]["param_groups"][0]["params"] == db["optimizers"][0]["param_groups"][0]["params"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_processes_equal_one(base: Path, tmp_path: Path, strategy: str, method: str) -> None:
    one = _single(base, tmp_path / "single", method)
    output, training = _sharded(base, tmp_path / "sharded", method, strategy)
    for path in (output, training):  # the .anc files verify (zip, manifest, hashes)
        with anemoi_ckpt.open(path) as ck:
            ck.verify()
    _assert_same_files(one.output, output)
    _assert_same_files(one.training_file, training)
    # a sharded run's training file resumes single-process, as the one-process run's would
    resumed = _single(base, tmp_path / "resumed", method, steps=MORE, resume=str(training))
    one_go = _single(base, tmp_path / "one-go", method, steps=MORE)
    assert resumed.steps == MORE and resumed.resume == {"fresh": [], "dropped": []}
    _assert_same_files(one_go.training_file, resumed.training_file)
    _assert_same_files(one_go.output, resumed.output)
    if (strategy, method) == ("fsdp", "lora"):
        # and the other way: a single-process training file resumed by FSDP2 (full state loaded
        # on every rank and sharded there, optimizer state by name around frozen base weights)
        output2, training2 = _sharded(base, tmp_path / "sharded-resumed", method, strategy,
                                      resume=str(one.training_file), steps=MORE)
        _assert_same_files(one_go.training_file, training2)
        _assert_same_files(one_go.output, output2)


def test_batch_must_divide_over_processes(base: Path, tmp_path: Path) -> None:
    cfg = load_config(None, data={**_config(base, "full"), "strategy": "ddp", "devices": 3,
                                  "output": {"dir": str(tmp_path / "out")}})
    with pytest.raises(ConfigError, match="batch_size"):
        train(cfg, accelerator="cpu", durable=False)
    assert not (tmp_path / "out").exists()
