"""The bundled Lightning trainer: the method switch, its outputs, exact resume, fork with a changed
frozen set, configuration errors and the CLI. Real Lightning and PEFT, a tiny reference model, CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("peft")

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.adapters.merge import merge  # noqa: E402
from anemoi_ckpt.builders import build_model, model_from_checkpoint, model_spec  # noqa: E402
from anemoi_ckpt.errors import AncError  # noqa: E402
from anemoi_ckpt.trainer.config import ConfigError, load_config  # noqa: E402
from anemoi_ckpt.trainer.methods import apply_lora  # noqa: E402
from anemoi_ckpt.trainer.run import train  # noqa: E402

from conftest import run_cli  # noqa: E402

TINY = {"size": "tiny", "channels": 8, "layers": 2, "heads": 2, "n_lat": 4, "n_lon": 8, "n_vars": 3}
FREEZE_TRAIN = {"freeze": {"train": ["processor.proc.1"]}}


def _save_base(path: Path, seed: int, with_builder: bool = True) -> Path:
    torch.manual_seed(seed)
    model = build_model({"builder": "reference", "config": TINY})
    anemoi_ckpt.save(path, model.state_dict(), metadata={"model": model_spec(model)} if with_builder else {})
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_base(tmp_path_factory.mktemp("base") / "base.anc", 0)


def _cfg(base: Path, out: Path, method: str, steps: int, **over: Any):  # noqa: ANN202
    data: dict[str, Any] = {"base": str(base), "method": method, "max_steps": steps,
                            "data": {"n_samples": 12, "batch_size": 4, "val_samples": 4},
                            "optimizer": {"lr": 1e-2, "weight_decay": 0.01},
                            "schedule": {"name": "cosine", "warmup_steps": 1, "total_steps": 10},
                            "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
                            "output": {"dir": str(out), "name": "run"}}
    if method == "freeze":
        data.update(FREEZE_TRAIN)
    for key, value in over.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    return load_config(None, data=data)


def _run(base: Path, out: Path, method: str, steps: int, resume: str | None = None, **over: Any):  # noqa: ANN202
    return train(_cfg(base, out, method, steps, **over), resume=resume, accelerator="cpu", durable=False)


def _x(seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, TINY["n_lat"] * TINY["n_lon"], TINY["n_vars"], generator=g)


# --- the method switch and what each method writes ---------------------------------------------
@pytest.mark.parametrize("variant", [{}, {"use_rslora": True, "use_dora": True}], ids=["lora", "rslora-dora"])
def test_lora_writes_an_adapter_that_merge_applies(base: Path, tmp_path: Path, variant: dict) -> None:
    r = _run(base, tmp_path, "lora", 4, lora=variant)
    assert r.kind == "adapter" and r.steps == 4
    with anemoi_ckpt.open(r.output) as ck:
        assert ck.kind == "adapter"
        md = ck.metadata.model_extra
        assert md["peft_config"]["peft_type"] == "LORA" and md["peft_config"]["r"] == 4
        assert md["peft_config"]["use_dora"] == bool(variant) and md["peft_config"]["inference_mode"] is True
        with anemoi_ckpt.open(base) as b:
            assert md["adapter"]["base_content_id"] == b.content_id
        keys = list(ck.tensors())
        assert keys and all(k.startswith("base_model.model.processor.proc.") for k in keys)
        assert any(k.endswith(".lora_A.weight") for k in keys) and not any(".default." in k for k in keys)
        rec = ck.lineage.records[0]
        assert rec.operation == "fine-tune" and rec.parameters["method"] == "lora"
        assert rec.parameters["steps"] == 4 and rec.parameters["config_digest"].startswith("sha256:")
        assert {"train_loss", "val_loss", "dataset", "config"} <= set(rec.parameters)
    merged = merge(base, [r.output], tmp_path / "merged.anc", durable=False)
    # PEFT's own merge of the fine-tuned model, rebuilt from the training file
    peft_model = apply_lora(model_from_checkpoint(base), _cfg(base, tmp_path, "lora", 1, lora=variant).lora)
    with anemoi_ckpt.open(r.training_file) as ck:
        peft_model.load_state_dict(ck.state_dict(), strict=True)
    want = peft_model.merge_and_unload().eval()(_x())
    got = model_from_checkpoint(merged.path).eval()(_x())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_freeze_writes_a_delta_of_changed_tensors_only(base: Path, tmp_path: Path) -> None:
    r = _run(base, tmp_path, "freeze", 3)
    assert r.kind == "delta"
    with anemoi_ckpt.open(base) as b, anemoi_ckpt.open(r.training_file) as t, anemoi_ckpt.open(r.output) as d:
        assert d.kind == "delta"
        bw, tw = b.state_dict(), t.state_dict()
        changed = {n for n in bw if not torch.equal(bw[n], tw[n])}
        assert changed and set(d.tensors()) == changed
        assert all(n.startswith("processor.proc.1.") for n in changed)
        assert d.metadata.model_extra["adapter"]["base_content_id"] == b.content_id
    merged = merge(base, [r.output], tmp_path / "merged.anc", durable=False)
    with anemoi_ckpt.open(merged.path) as m, anemoi_ckpt.open(r.training_file) as t:
        assert all(torch.equal(v, t.tensors()[n]) for n, v in m.state_dict().items())


def test_full_writes_a_model_that_builds(base: Path, tmp_path: Path) -> None:
    r = _run(base, tmp_path, "full", 3)
    assert r.kind == "inference"
    model = model_from_checkpoint(r.output)  # metadata.model set, strict load
    with anemoi_ckpt.open(r.training_file) as t:
        assert t.kind == "training" and t.metadata.model is not None
        assert all(torch.equal(v, t.tensors()[n]) for n, v in model.state_dict().items())
        assert {"weights", "optimizer", "state"} <= set(t.tensor_sections())
        assert "training-state" in t.documents()
        # optimizer state named after the parameters, never by position
        names = set(t.tensors("optimizer"))
        assert "encoder.weight.exp_avg" in names and "decoder.bias.exp_avg_sq" in names
        doc = t.document("training-state")
        assert doc["global_step"] == 3 and doc["optimizers"][0]["names"] == "by-parameter"
        assert doc["rng_states"]["torch"] == {"__tensor__": "state/rng_states.torch"}


def test_pretrain_writes_a_full_model(tmp_path: Path) -> None:
    cfg = load_config(None, data={"model": {"builder": "reference", "config": TINY}, "max_steps": 2,
                                  "data": {"variant": "global", "n_samples": 8, "batch_size": 4},
                                  "output": {"dir": str(tmp_path), "name": "base"}})
    r = train(cfg, pretrain=True, accelerator="cpu", durable=False)
    with anemoi_ckpt.open(r.output) as ck:
        assert ck.kind == "inference" and ck.lineage.records[0].operation == "pretrain"
    model_from_checkpoint(r.output)


# --- exact resume --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["full", "lora", "freeze"])
def test_resume_is_exact(base: Path, tmp_path: Path, method: str) -> None:
    """3 batches an epoch: N=4 stops mid-epoch 1, and LoRA dropout draws from the RNG."""
    n, m = 4, 3
    one_go = _run(base, tmp_path / "a", method, n + m)
    first = _run(base, tmp_path / "b", method, n)
    resumed = _run(base, tmp_path / "c", method, n + m, resume=first.training_file)
    assert resumed.steps == one_go.steps == n + m
    assert resumed.resume == {"fresh": [], "dropped": []}
    with anemoi_ckpt.open(one_go.training_file) as a, anemoi_ckpt.open(resumed.training_file) as c:
        for section in ("weights", "optimizer"):
            ta, tc = a.state_dict(section), c.state_dict(section)
            assert ta.keys() == tc.keys()
            assert all(torch.equal(ta[k], tc[k]) for k in ta), section
        assert a.content_id == c.content_id
        da, dc = a.document("training-state"), c.document("training-state")
        assert da["global_step"] == dc["global_step"]
        # The data position is the loader's own (Lightning's epoch counter counts a run stopped
        # mid-epoch by max_steps as a finished epoch, so it differs after a restart).
        loader = lambda d: d["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # noqa: E731
        assert loader(da) == loader(dc)
    with anemoi_ckpt.open(one_go.output) as a, anemoi_ckpt.open(resumed.output) as c:
        assert a.content_id == c.content_id
        parents = {p.uuid for p in c.lineage.records[0].parents}
    with anemoi_ckpt.open(first.training_file) as f:
        assert f.uuid in parents  # lineage: the resume file is a parent


def test_resume_with_changed_frozen_set_keeps_named_state(base: Path, tmp_path: Path) -> None:
    first = _run(base, tmp_path / "b", "freeze", 3, freeze={"train": ["processor.proc.1", "decoder"]})
    with pytest.warns(UserWarning, match="dropped the optimizer state"):
        fork = _run(base, tmp_path / "c", "freeze", 5, resume=first.training_file,
                    freeze={"train": ["processor.proc.1", "encoder"]})
    assert fork.resume["dropped"] == ["decoder.weight", "decoder.bias"]
    assert fork.resume["fresh"] == ["encoder.weight", "encoder.bias"]
    with anemoi_ckpt.open(fork.training_file) as t:
        opt = t.tensors("optimizer")
        assert float(opt["processor.proc.1.mlp.mlp.0.weight.step"]) == 5  # kept: 3 + 2
        assert float(opt["encoder.weight.step"]) == 2                     # fresh
        assert not any(n.startswith("decoder.") for n in opt)


# --- refusals: one line, before training, nothing written ------------------------------------------
def _refused(out: Path, fn) -> str:  # noqa: ANN001
    with pytest.raises(AncError) as info:
        fn()
    line = info.value.line()
    assert "\n" not in line
    assert not out.exists() or not any(out.rglob("*.anc"))
    return line


def test_config_errors(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert "unknown key 'lora.rank'" in _refused(out, lambda: _cfg(base, out, "lora", 2, lora={"rank": 4}))
    line = _refused(out, lambda: _cfg(base, out, "lora", 2, data={"batch_size": "four"}))
    assert "data.batch_size" in line and "integer" in line
    assert "method" in _refused(out, lambda: _cfg(base, out, "sgd", 2))
    line = _refused(out, lambda: _run(base, out, "freeze", 2, freeze={"train": ["processor.nope*"]}))
    assert "freeze.train" in line and "processor.nope*" in line
    line = _refused(out, lambda: _run(base, out, "lora", 2, lora={"targets": ["processor.proc.*.attention"]}))
    assert "not a Linear" in line and "lora.targets" in line
    bare = _save_base(tmp_path / "bare.anc", 0, with_builder=False)
    assert "no model builder" in _refused(out, lambda: _run(bare, out, "full", 2))


def test_resume_from_another_base_is_refused(base: Path, tmp_path: Path) -> None:
    first = _run(base, tmp_path / "b", "lora", 1)
    other = _save_base(tmp_path / "other.anc", 1)
    out = tmp_path / "c"
    line = _refused(out, lambda: _run(other, out, "lora", 2, resume=first.training_file))
    assert "base content id" in line
    assert "method" in _refused(out, lambda: _run(base, out, "full", 2, resume=first.training_file))
    line = _refused(out, lambda: _run(base, out, "lora", 2, resume=first.training_file,
                                      lora={"targets": ["processor.proc.*.attention.lin_q"]}))
    assert "does not fit the model" in line
    assert "not a training file" in _refused(out, lambda: _run(base, out, "lora", 2, resume=str(base)))


# --- command line --------------------------------------------------------------------------------
def test_cli_finetune_with_set(base: Path, tmp_path: Path) -> None:
    config = tmp_path / "ft.yaml"
    config.write_text("base: base.anc\nmethod: lora\nmax_steps: 50\n"
                      "data: {n_samples: 8, batch_size: 4, val_samples: 4}\n")
    os.symlink(base, tmp_path / "base.anc")  # a relative base is found beside the config
    out = tmp_path / "out"
    res = run_cli("finetune", str(config), "--set", "max_steps=2", "--set", f"output.dir={out}",
                  "--set", "method=freeze", "--set", "freeze.freeze=[encoder, decoder]", "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["kind"] == "delta" and result["steps"] == 2 and result["method"] == "freeze"
    assert os.path.exists(result["output"]) and os.path.exists(result["training_file"])
    bad = run_cli("finetune", str(config), "--set", "lora.r=0", "--set", f"output.dir={out}-bad")
    assert bad.returncode == 2 and not os.path.exists(f"{out}-bad")
    errors = [ln for ln in bad.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "lora.r" in errors[0] and str(config) in errors[0]


def test_example_configs_validate(base: Path) -> None:
    folder = Path(__file__).resolve().parent.parent / "trainer" / "configs"
    for name in ("pretrain-tiny.yaml", "finetune-lora.yaml", "finetune-freeze.yaml"):
        cfg = load_config(folder / name, [f"base={base}"] if name.startswith("finetune") else [])
        assert cfg.method in ("full", "lora", "freeze")
    with pytest.raises(ConfigError, match="--set"):
        load_config(folder / "finetune-lora.yaml", ["novalue"])
