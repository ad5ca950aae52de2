"""Issue 17: activation checkpointing and a bf16 frozen base (``anemoi_ckpt.trainer.memory``), on
the reference model with real PEFT LoRA and the trainer's own ``apply_method``."""

from __future__ import annotations

import pytest

pytest.importorskip("peft")

import torch  # noqa: E402

from anemoi_ckpt.builders import build_model  # noqa: E402
from anemoi_ckpt.trainer.config import DEFAULT_LORA_TARGETS, ConfigError, TrainConfig  # noqa: E402
from anemoi_ckpt.trainer.memory import (  # noqa: E402
    apply_memory, frozen_dtype_note, materialize, parameters_on_meta)
from anemoi_ckpt.trainer.methods import apply_method  # noqa: E402

SMALL = {"builder": "reference", "config": {"size": "small", "layers": 3}}


def _model(method: str, spec: dict = SMALL, **extra):
    torch.manual_seed(0)
    base = build_model(spec)
    raw = {"model": spec, "method": method, "max_steps": 1,
           "lora": {"targets": list(DEFAULT_LORA_TARGETS)}, **extra}
    return base, apply_method(base, TrainConfig.model_validate(raw))


def _batch(model, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.grid_size, model.n_vars, generator=g)


def _grads(method: str, checkpointing: bool) -> dict[str, torch.Tensor]:
    base, model = _model(method)
    if method == "lora":  # B starts at zero: make the adapter matter, identically on both sides
        torch.manual_seed(2)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_()
    apply_memory(model, activation_checkpointing=checkpointing, base_dtype="fp32")
    model.train()
    model(_batch(base)).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_checkpointing_gives_the_same_gradients(method: str) -> None:
    with_ckpt, without = _grads(method, True), _grads(method, False)
    assert with_ckpt.keys() == without.keys() and with_ckpt
    for name in with_ckpt:
        torch.testing.assert_close(with_ckpt[name], without[name], rtol=1e-5, atol=1e-6, msg=name)


def _saved_bytes(model, x) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).square().mean()
    loss.backward()
    return sum(seen.values())


def test_checkpointing_keeps_less_activation_memory() -> None:
    spec = {"builder": "reference", "config": {"size": "small", "layers": 4, "n_lat": 24, "n_lon": 48}}
    sizes = {}
    for on in (False, True):
        base, model = _model("lora", spec)
        apply_memory(model, activation_checkpointing=on, base_dtype="fp32")
        model.train()
        sizes[on] = _saved_bytes(model, _batch(base, batch=4))
    # without: every block's q/k/v, attention, MLP hidden...; with: the block inputs only
    assert sizes[True] * 4 < sizes[False], sizes


def test_bf16_base_under_lora() -> None:
    base, model = _model("lora")
    keys = {k: v.dtype for k, v in model.state_dict().items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = apply_memory(model, activation_checkpointing=True, base_dtype="bf16")
    assert list(model.state_dict()) == list(keys)  # names unchanged: outputs and merges use them
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert "lora_" in n and p.dtype == torch.float32, n
            assert torch.equal(p, before[n])
        else:
            assert p.dtype == torch.bfloat16, n
            assert torch.equal(p, before[n].to(torch.bfloat16))
    assert base.grid_features.dtype == torch.float32  # buffers untouched
    assert plan.cast and not plan.kept_fp32 and plan.checkpointed == ["base_model.model.processor"]
    note = frozen_dtype_note(model)
    assert note is not None and note["frozen_dtype"] == "bfloat16" and frozen_dtype_note(base) == note

    model.train()
    out = model(_batch(base))
    assert out.dtype == torch.float32
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads[1::2])


def test_lora_branch_stays_exact_fp32() -> None:
    _, model = _model("lora")
    apply_memory(model, base_dtype="bf16")
    layer = model.base_model.model.processor.proc[0].attention.lin_q
    torch.manual_seed(3)
    layer.lora_B["default"].weight.data.normal_()
    x = torch.randn(2, 5, layer.in_features)
    base_out = torch.nn.functional.linear(x.to(torch.bfloat16), layer.base_layer.weight).float()
    lora_out = (x @ layer.lora_A["default"].weight.T) @ layer.lora_B["default"].weight.T
    expected = base_out + lora_out * layer.scaling["default"]
    assert torch.equal(layer(x), expected)


def test_bf16_base_under_freeze() -> None:
    base, model = _model("freeze", freeze={"freeze": ["processor"]})
    apply_memory(model, base_dtype="bf16")
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if n.startswith("processor.")} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if not n.startswith("processor.")} == {torch.float32}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = _batch(base)
    y = x + 0.1
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_refusals() -> None:
    _, full = _model("full")
    with pytest.raises(ConfigError, match="base_dtype: bf16 needs frozen weights"):
        apply_memory(full, base_dtype="bf16")
    with pytest.raises(ConfigError, match="base_dtype: 'fp16'"):
        apply_memory(full, base_dtype="fp16")
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="no checkpointing switch"):
        apply_memory(plain, activation_checkpointing=True)


def test_materialize_is_the_eager_build_bit_for_bit() -> None:
    torch.manual_seed(0)
    eager = build_model(SMALL)
    after_eager = torch.rand(4)
    torch.manual_seed(0)
    with parameters_on_meta():
        lean = build_model(SMALL)
    assert {p.device.type for p in lean.parameters()} == {"meta"}
    assert lean.grid_features.device.type == "cpu"
    held = materialize(lean, lambda n: torch.bfloat16 if n.startswith("processor.") else torch.float32)
    assert torch.equal(torch.rand(4), after_eager)  # the same RNG draws, in the same order
    assert held == sum(p.numel() * p.element_size() for p in lean.parameters())
    want = eager.state_dict()
    for k, v in lean.state_dict().items():
        assert torch.equal(v, want[k].to(v.dtype)), k
        assert v.dtype == (torch.bfloat16 if k.startswith("processor.") else torch.float32)
