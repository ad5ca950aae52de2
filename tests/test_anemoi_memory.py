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


# ---------------------------------------------------------------- file pages after the bf16 cast
def _mapped_rss_kib(path: str) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as fh:
        for line in fh:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line
                inside = line.rstrip("\n").endswith(" " + path)
            elif inside and head == "Rss:":
                total += int(line.split()[1])
    return total


def _digest(path: str) -> tuple[str, int, int]:
    import hashlib
    import os

    st = os.stat(path)
    return hashlib.sha256(open(path, "rb").read()).hexdigest(), st.st_size, st.st_mtime_ns


def _forward(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    x = {}
    for name, idx in model.data_indices.items():
        grid = getattr(model.model.node_attributes, f"latlons_{name}").shape[0]
        x[name] = torch.randn(1, model.n_step_input, 1, grid, len(idx.model.input.full), generator=gen)
    with torch.no_grad():
        return model.model(x)["data"].clone()


def test_page_spans_keeps_every_page_a_live_tensor_touches() -> None:
    from anemoi_ckpt.anemoi.pages import page_spans

    page = 4096
    # two dead tensors sharing a page merge; a live one cuts out the pages it touches
    assert page_spans([(0, 5000), (5000, 9000)], [], page, 10**6) == [(0, 12288)]
    assert page_spans([(0, 5000), (5000, 20000)], [(9000, 9100)], page, 10**6) == [(0, 8192), (12288, 20480)]
    assert page_spans([(100, 200)], [(300, 400)], page, 10**6) == []  # one page, shared: kept
    assert page_spans([(0, 10000)], [], page, 9000) == [(0, 9000)]  # capped at the map's end
    assert page_spans([], [(0, 10)], page, 10**6) == []


def test_bf16_cast_releases_the_file_pages_nothing_uses(anc: str) -> None:
    """LoRA's bf16 base loaded from the file's map: after the cast the fp32 pages are dropped; the
    model's outputs, the reader's views of the file and the file itself are unchanged by it, and a
    tensor still in use (changed in place) keeps its pages."""
    from anemoi_ckpt.anemoi.pages import release_file_pages
    from anemoi_ckpt.builders import model_from_checkpoint
    from anemoi_ckpt.reader import open_checkpoint

    before = _digest(anc)
    with open_checkpoint(anc) as ck:  # open for the run, as the trainer holds its base
        model = model_from_checkpoint(ck)
        targets = [n for n, m in model.named_modules()
                   if n.startswith("model.processor.") and isinstance(m, torch.nn.Linear)]
        trained = apply_method(model, TrainConfig.model_validate(
            {"model": {"builder": "anemoi"}, "method": "lora", "max_steps": 1, "lora": {"targets": targets}}))
        # a frozen weight someone still holds, changed in place (a private copy-on-write page)
        name, held = max(((n, p) for n, p in model.named_parameters() if n.startswith("model.processor.")
                          and p.ndim == 2), key=lambda np_: np_[1].numel())
        held = held.detach()
        held.add_(1.0)
        held_values = held.clone()
        file_views = {n: t.clone() for n, t in ck.tensors("weights").items()}
        plan = apply_memory(trained, activation_checkpointing=False, base_dtype="bf16", release_file_pages=False)
        assert plan.file_pages_released == 0 and plan.cast
        out = _forward(model)
        resident = _mapped_rss_kib(ck.path)
        released = release_file_pages(model)
        assert released > 0
        assert _mapped_rss_kib(ck.path) * 1024 <= resident * 1024 - released // 2, "pages still resident"
        assert release_file_pages(model) == 0  # nothing new to release
        assert torch.equal(_forward(model), out)  # the released pages were not the model's
        torch.testing.assert_close(held, held_values, rtol=0, atol=0, msg=f"{name}: a held tensor's page was dropped")
        for n, t in ck.tensors("weights").items():  # the reader's views fault the file's bytes back
            if n != name:
                assert torch.equal(t, file_views[n]), n
    assert _digest(anc) == before


def test_release_during_apply_memory_and_after_the_file_is_closed(anc: str) -> None:
    """``apply_memory`` releases by itself; a model whose file was closed after the build (the
    views keep the map) is released too; full fine-tuning (nothing cast) releases nothing."""
    from anemoi_ckpt.anemoi.pages import release_file_pages
    from anemoi_ckpt.builders import model_from_checkpoint

    before = _digest(anc)
    outs = {}
    for release in (False, True):
        model, trained = _lora(anc)  # load_model: the file is closed once the model is built
        plan = apply_memory(trained, activation_checkpointing=True, base_dtype="bf16", release_file_pages=release)
        assert (plan.file_pages_released > 0) == release
        outs[release] = _forward(model)
    assert torch.equal(outs[True], outs[False])
    full = model_from_checkpoint(anc)
    apply_memory(full, activation_checkpointing=True, base_dtype="fp32")
    assert release_file_pages(full) == 0  # every weight is still the model's
    assert _digest(anc) == before
