"""Issue 17 on a real anemoi-models graph-transformer (the genuine fixture, built from an ``.anc``
by the installed anemoi-models): anemoi's own activation checkpointing switched by
``apply_memory``, and a bf16 frozen base under LoRA on the processor's linears."""

from __future__ import annotations

import pytest

pytest.importorskip("anemoi.models")
pytest.importorskip("torch_geometric")
pytest.importorskip("peft")

import torch  # noqa: E402

from anemoi_ckpt.anemoi import load_model  # noqa: E402
from anemoi_ckpt.convert import convert  # noqa: E402
from anemoi_ckpt.trainer.config import TrainConfig  # noqa: E402
from anemoi_ckpt.trainer.memory import apply_memory  # noqa: E402
from anemoi_ckpt.trainer.methods import apply_method  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402

FIXTURE = FIXTURES / "legacy" / "anemoi" / "graphtransformer" / "last.ckpt"


@pytest.fixture(scope="module")
def anc(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("mem") / "gt.anc"
    convert(FIXTURE, path)
    return str(path)


def _lora(anc: str):
    model = load_model(anc)
    targets = [n for n, m in model.named_modules()
               if n.startswith("model.processor.") and isinstance(m, torch.nn.Linear)]
    cfg = TrainConfig.model_validate({"model": {"builder": "anemoi"}, "method": "lora", "max_steps": 1,
                                      "lora": {"targets": targets}})
    torch.manual_seed(0)
    trained = apply_method(model, cfg)
    torch.manual_seed(1)
    for n, p in trained.named_parameters():
        if "lora_B" in n:
            p.data.normal_(std=0.01)
    return model, trained


def _step(model, trained) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    x = {}
    for name, idx in model.data_indices.items():
        grid = getattr(model.model.node_attributes, f"latlons_{name}").shape[0]
        x[name] = torch.randn(2, model.n_step_input, 1, grid, len(idx.model.input.full), generator=gen)
    trained.train()
    out = model.model(x)
    sum(v.square().mean() for v in out.values()).backward()
    return {n: p.grad.clone() for n, p in trained.named_parameters() if p.requires_grad}


def test_anemoi_checkpointing_switch_and_same_gradients(anc: str) -> None:
    grads = {}
    for on in (False, True):
        model, trained = _lora(anc)
        keys = list(trained.state_dict())
        plan = apply_memory(trained, activation_checkpointing=on, base_dtype="fp32")
        switches = {n: m.gradient_checkpointing for n, m in model.named_modules()
                    if "gradient_checkpointing" in vars(m)}
        assert any(".processor" in n for n in switches) and any(".encoder" in n for n in switches)
        assert set(switches.values()) == {on}
        assert (sorted(plan.checkpointed) == sorted(f"base_model.model.{n}" for n in switches)) == on
        assert list(trained.state_dict()) == keys
        grads[on] = _step(model, trained)
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for n in grads[True]:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-4, atol=1e-6, msg=n)


def test_anemoi_bf16_base_under_lora(anc: str) -> None:
    model, trained = _lora(anc)
    keys = list(trained.state_dict())
    buffers = {n: b.dtype for n, b in trained.named_buffers()}
    plan = apply_memory(trained, activation_checkpointing=True, base_dtype="bf16")
    assert list(trained.state_dict()) == keys
    assert {n: b.dtype for n, b in trained.named_buffers()} == buffers
    assert plan.cast
    for n, p in trained.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, n
        elif n in plan.cast:
            assert p.dtype == torch.bfloat16, n
    assert not [n for n, p in trained.named_parameters() if not p.requires_grad and p.dtype == torch.float32
                and n not in plan.kept_fp32]
    grads = _step(model, trained)
    assert all(g.dtype == torch.float32 for g in grads.values())
    assert any(g.abs().sum() > 0 for g in grads.values())
