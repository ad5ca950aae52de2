"""merge: LoRA adapters made by real PEFT, merged into a base .anc, against PEFT's own
merge_and_unload(); the combination methods against hand-computed examples; refusals via the CLI."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch import nn

import anemoi_ckpt
from anemoi_ckpt.adapters import maths, merge
from anemoi_ckpt.adapters.lora_config import lora_scale, pattern_key
from anemoi_ckpt.adapters.peft_keys import base_tensor_name, group_keys, split_key
from anemoi_ckpt.demo.data import demo_anemoi_metadata
from anemoi_ckpt.errors import FormatError, UsageError

from conftest import run_cli

H = 8


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin_q, self.lin_k, self.lin_v, self.lin_o = (nn.Linear(H, H) for _ in range(4))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = Attention()
        self.mlp = nn.Sequential(nn.Linear(H, 2 * H), nn.GELU(), nn.Linear(2 * H, H))
        self.norm = nn.LayerNorm(H)


class Net(nn.Module):
    """Named like anemoi's processor: model.processor.proc.<i>.attention.lin_q, ..."""

    def __init__(self, fifo: bool = False) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.processor = nn.Module()
        self.model.processor.proc = nn.ModuleList([Block(), Block()])
        self.model.node_emb = nn.Embedding(10, H)
        if fifo:  # GPT-2 style Conv1D stores its weight (in, out): PEFT's fan_in_fan_out
            from transformers.pytorch_utils import Conv1D

            self.model.c_attn = Conv1D(3 * H, H)


def _net(fifo: bool = False) -> Net:
    torch.manual_seed(0)
    return Net(fifo)


def _base(tmp_path: Path, net: nn.Module, name: str = "base.anc") -> Path:
    md, arrays = demo_anemoi_metadata()
    path = tmp_path / name
    graph = {"edge_index": torch.arange(12, dtype=torch.int64).reshape(2, 6)}
    anemoi_ckpt.save(path, net.state_dict(), anemoi_metadata=md, supporting_arrays=arrays,
                     sections={"graph": graph}, metadata={"description": "base"})
    return path


def _peft(net: nn.Module, seed: int = 1, **cfg) -> nn.Module:
    pm = get_peft_model(copy.deepcopy(net), LoraConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking adapters: B (and DoRA's magnitude) non-zero
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return pm


def _import(pm: nn.Module, tmp_path: Path, base: Path, name: str = "lora",
            base_content_id: str | None = None) -> Path:
    """A kind-adapter .anc from a real save_pretrained folder (what 'convert --base' writes)."""
    folder = tmp_path / f"{name}-peft"
    pm.save_pretrained(folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    out = tmp_path / f"{name}.anc"
    with anemoi_ckpt.open(base) as bk:
        info = {"name": name, "base_content_id": base_content_id or bk.content_id, "base_uuid": bk.uuid}
        with anemoi_ckpt.Writer(out, kind="adapter", metadata={"peft_config": cfg, "adapter": info},
                                parents=[bk]) as w:
            w.add_section("weights", tensors)
    return out


def _assert_close(path: Path, expected: dict[str, torch.Tensor], tol: float = 1e-6) -> None:
    with anemoi_ckpt.open(path) as ck:
        got = ck.state_dict()
        assert set(got) == set(expected)
        for k, want in expected.items():
            err = (got[k].double() - want.double()).abs().max().item()
            assert err <= tol * max(want.abs().max().item(), 1e-30), (k, err)
            assert got[k].dtype == want.dtype


CASES = {
    "lora": dict(r=4, lora_alpha=8, target_modules=["lin_q", "lin_k", "lin_v", "lin_o", "mlp.0"]),
    "rslora": dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["lin_q", "lin_v"]),
    "patterns": dict(r=4, lora_alpha=8, target_modules=["lin_q", "lin_k", "lin_v", "lin_o"],
                     rank_pattern={"proc.1.attention.lin_q": 2, "lin_v": 6},
                     alpha_pattern={"lin_k": 3, r"proc\.0\.attention\.lin_o": 16}),
    "rslora_patterns": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["lin_q", "lin_k"],
                            rank_pattern={"lin_k": 2}, alpha_pattern={"proc.0.attention.lin_q": 5}),
    "dora": dict(r=4, lora_alpha=8, use_dora=True, target_modules=["lin_q", "lin_k", "mlp.2"]),
    "dora_embedding": dict(r=3, lora_alpha=6, use_dora=True, target_modules=["lin_v", "node_emb"]),
    "embedding_modules_to_save": dict(r=2, lora_alpha=4, target_modules=["node_emb", "lin_o"],
                                      modules_to_save=["proc.0.norm"]),
    "lora_bias": dict(r=4, lora_alpha=8, lora_bias=True, target_modules=["lin_q", "mlp.0"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_adapter_equals_peft_merge_and_unload(tmp_path: Path, case: str) -> None:
    net = _net()
    base = _base(tmp_path, net)
    pm = _peft(net, **CASES[case])
    adapter = _import(pm, tmp_path, base)
    if case == "embedding_modules_to_save":
        with torch.no_grad():
            pm.base_model.model.model.processor.proc[0].norm.modules_to_save["default"].weight.add_(1.5)
        adapter = _import(pm, tmp_path, base)
    report = merge(base, [adapter], durable=False)
    _assert_close(Path(report.path), pm.merge_and_unload().state_dict())
    assert report.path == str(tmp_path / "base+lora.anc")
    assert report.tensors_changed and report.method == "linear"


@pytest.mark.parametrize("dora", [False, True])
def test_fan_in_fan_out_conv1d(tmp_path: Path, dora: bool) -> None:
    net = _net(fifo=True)
    base = _base(tmp_path, net)
    pm = _peft(net, r=4, lora_alpha=8, fan_in_fan_out=True, use_dora=dora, target_modules=["c_attn"])
    adapter = _import(pm, tmp_path, base)
    report = merge(base, [adapter], tmp_path / "out.anc", durable=False)
    _assert_close(Path(report.path), pm.merge_and_unload().state_dict())


def test_output_keeps_sections_metadata_and_records_lineage(tmp_path: Path) -> None:
    net = _net()
    base = _base(tmp_path, net)
    a1 = _import(_peft(net, seed=1, **CASES["lora"]), tmp_path, base, "one")
    a2 = _import(_peft(net, seed=2, **CASES["rslora"]), tmp_path, base, "two")
    report = merge(base, [a1, a2], weights=[0.5, 2.0], durable=False)
    assert Path(report.path).name == "base+one+two.anc"
    with anemoi_ckpt.open(base) as bk, anemoi_ckpt.open(report.path) as ck, \
            anemoi_ckpt.open(a1) as k1, anemoi_ckpt.open(a2) as k2:
        assert ck.kind == "inference" and ck.content_id == report.content_id
        assert torch.equal(ck.tensors("graph")["edge_index"], bk.tensors("graph")["edge_index"])
        assert ck.anemoi_metadata["uuid"] == ck.uuid != bk.anemoi_metadata["uuid"]
        assert ck.supporting_arrays.keys() == bk.supporting_arrays.keys()
        assert ck.metadata.description == "base"
        rec = ck.lineage.records[0]
        assert rec.operation == "merge"
        assert [p.uuid for p in rec.parents] == [bk.uuid, k1.uuid, k2.uuid]
        assert rec.parameters["weights"] == [0.5, 2.0] and rec.parameters["adapters"] == ["one", "two"]
        assert rec.parameters["forced"] is False
        # linear with weights: W + 0.5 ΔW_1 + 2 ΔW_2, on a tensor both adapters target
        name = "model.processor.proc.0.attention.lin_q.weight"
        d1 = _delta(k1, "model.processor.proc.0.attention.lin_q")
        d2 = _delta(k2, "model.processor.proc.0.attention.lin_q")
        want = bk.tensors()[name] + 0.5 * d1 + 2.0 * d2
        torch.testing.assert_close(ck.tensors()[name], want, rtol=1e-6, atol=1e-6)
        untouched = "model.processor.proc.0.norm.weight"
        assert torch.equal(ck.tensors()[untouched], bk.tensors()[untouched])
    assert sorted(report.adapters[1]["modules"]) == [f"model.processor.proc.{i}.attention.{n}"
                                                     for i in (0, 1) for n in ("lin_q", "lin_v")]
    assert report.adapters[0]["kind"] == "lora" and report.adapters[0]["source"] == str(a1)


def _delta(ck, module: str) -> torch.Tensor:
    cfg = ck.metadata.model_extra["peft_config"]
    t = ck.tensors()
    return maths.lora_delta(t[f"base_model.model.{module}.lora_A.weight"],
                            t[f"base_model.model.{module}.lora_B.weight"], lora_scale(cfg, module))


def test_same_seed_same_result(tmp_path: Path) -> None:
    net = _net()
    base = _base(tmp_path, net)
    a1 = _import(_peft(net, seed=1, **CASES["lora"]), tmp_path, base, "one")
    a2 = _import(_peft(net, seed=2, **CASES["lora"]), tmp_path, base, "two")
    ids = [merge(base, [a1, a2], tmp_path / f"o{i}.anc", method="dare_ties", density=0.5, seed=s,
                 durable=False).content_id for i, s in enumerate((7, 7, 8))]
    assert ids[0] == ids[1] != ids[2]


def test_delta_file_replaces_then_lora_adds(tmp_path: Path) -> None:
    net = _net()
    base = _base(tmp_path, net)
    q = "model.processor.proc.0.attention.lin_q.weight"
    norm = "model.processor.proc.1.norm.bias"
    repl = {q: torch.full((H, H), 0.25), norm: torch.arange(H, dtype=torch.float32)}
    delta = tmp_path / "freeze.anc"
    with anemoi_ckpt.open(base) as bk:
        anemoi_ckpt.save(delta, repl, kind="delta", parents=[bk], metadata={
            "adapter": {"name": "freeze", "base_content_id": bk.content_id, "base_uuid": bk.uuid}})
    report = merge(base, [delta], durable=False)
    with anemoi_ckpt.open(report.path) as ck, anemoi_ckpt.open(base) as bk:
        assert torch.equal(ck.tensors()[q], repl[q]) and torch.equal(ck.tensors()[norm], repl[norm])
        other = "model.processor.proc.1.attention.lin_q.weight"
        assert torch.equal(ck.tensors()[other], bk.tensors()[other])
    assert sorted(report.tensors_changed) == sorted(repl)
    # delta first, then the LoRA delta on top of the replaced weight
    lora = _import(_peft(net, **CASES["lora"]), tmp_path, base)
    both = merge(base, [delta, lora], tmp_path / "both.anc", durable=False)
    with anemoi_ckpt.open(both.path) as ck, anemoi_ckpt.open(lora) as lk:
        want = repl[q] + _delta(lk, "model.processor.proc.0.attention.lin_q")
        torch.testing.assert_close(ck.tensors()[q], want, rtol=1e-6, atol=1e-6)


# --- the maths against hand-computed examples ----------------------------------------------------

def test_lora_delta_applies_scale_once_on_the_product() -> None:
    A = torch.tensor([[1.0, 2.0, 0.0, -1.0]])          # r=1 x in=4
    B = torch.tensor([[2.0], [-1.0]])                 # out=2 x r=1
    want = torch.tensor([[2.0, 4.0, 0.0, -2.0], [-1.0, -2.0, 0.0, 1.0]]) * 0.5
    assert torch.equal(maths.lora_delta(A, B, 0.5), want)
    assert torch.equal(maths.lora_delta(A, B, 0.5, fan_in_fan_out=True), want.T)


# no ties in magnitude, so the top-k trim is unambiguous
D1 = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -4.0], [2.0, 1.5, -1.25]])
D2 = torch.tensor([[-3.0, 1.0, 1.5], [0.5, 2.0, 4.0], [-1.25, -0.5, 3.0]])


def test_ties_by_hand() -> None:
    # density 2/3: each delta keeps its int(2/3 * 9) = 6 entries of largest magnitude
    t1 = torch.tensor([[0.0, -2.0, 3.0], [0.0, 0.0, -4.0], [2.0, 1.5, -1.25]])
    t2 = torch.tensor([[-3.0, 0.0, 1.5], [0.0, 2.0, 4.0], [-1.25, 0.0, 3.0]])
    assert torch.equal(maths.magnitude_trim(D1, 2 / 3), t1)
    assert torch.equal(maths.magnitude_trim(D2, 2 / 3), t2)
    # sign of t1 + t2 = [[-3, -2, 4.5], [0, 2, 0], [0.75, 1.5, 1.75]]; a zero sum elects +
    elected = torch.tensor([[-1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert torch.equal(maths.elect_sign(torch.stack([t1, t2])), elected)
    # mean of the agreeing non-zero values: [0,2] (3+1.5)/2; [1,2] -4 disagrees; [2,0] -1.25 too
    want = torch.tensor([[-3.0, -2.0, 2.25], [0.0, 2.0, 4.0], [2.0, 1.5, 3.0]])
    assert torch.equal(maths.COMBINE["ties"]([D1, D2], [1.0, 1.0], density=2 / 3), want)
    # weights multiply the values before the disjoint mean, the count is unweighted (PEFT)
    weighted = maths.COMBINE["ties"]([D1, D2], [2.0, 1.0], density=2 / 3)
    assert weighted[0, 2] == (2 * 3.0 + 1.5) / 2 and weighted[0, 0] == -3.0 and weighted[1, 2] == 4.0


def test_dare_linear_by_hand() -> None:
    density, seed = 0.5, 1234
    got = maths.COMBINE["dare_linear"]([D1, D2], [1.0, 0.5], density=density,
                                       generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    keep1 = torch.rand(D1.shape, generator=g) < density  # drawn in adapter order
    keep2 = torch.rand(D2.shape, generator=g) < density
    assert 0 < keep1.sum() < 9 or 0 < keep2.sum() < 9  # something was dropped and something kept
    want = torch.where(keep1, D1 * 2, 0.0) + 0.5 * torch.where(keep2, D2 * 2, 0.0)  # 1/(1-p) = 2
    assert torch.equal(got, want)
    assert torch.equal(got == 0, ~keep1 & ~keep2 | (want == 0))


def test_dare_ties_by_hand() -> None:
    density, seed = 0.6, 99
    got = maths.COMBINE["dare_ties"]([D1, D2], [1.0, 1.0], density=density,
                                     generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    d1 = torch.where(torch.rand(D1.shape, generator=g) < density, D1 / density, 0.0)
    d2 = torch.where(torch.rand(D2.shape, generator=g) < density, D2 / density, 0.0)
    want = torch.zeros(3, 3)
    for i in range(3):
        for j in range(3):
            a, b = d1[i, j].item(), d2[i, j].item()
            s = 1.0 if a + b >= 0 else -1.0
            agree = [v for v in (a, b) if v != 0 and math.copysign(1.0, v) == s]
            want[i, j] = sum(agree) / max(1, len(agree))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_svd_by_hand() -> None:
    # rank-2 sum of two rank-1 deltas with singular values 3 and 1: rank 1 keeps the first
    u1, v1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    u2, v2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0, 0.0])
    d1, d2 = 3 * torch.outer(u1, v1), torch.outer(u2, v2)
    got = maths.COMBINE["svd"]([d1, d2], [1.0, 1.0], rank=1)
    torch.testing.assert_close(got, d1, rtol=0, atol=1e-6)
    torch.testing.assert_close(maths.COMBINE["svd"]([d1, d2], [1.0, 1.0], rank=2), d1 + d2)


def test_linear_by_hand() -> None:
    assert torch.equal(maths.COMBINE["linear"]([D1, D2], [2.0, -1.0]), 2 * D1 - D2)


def test_dora_merge_by_hand() -> None:
    W = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    delta = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    m = torch.tensor([10.0, 2.0])
    # rows of W + ΔW: [3, 4] (norm 5) and [0, 1] (norm 1)
    assert torch.equal(maths.dora_merge(W, delta, m), torch.tensor([[6.0, 8.0], [0.0, 2.0]]))


# --- configs and keys ------------------------------------------------------------------------------

def test_pattern_key_mirrors_peft() -> None:
    from peft.utils.other import get_pattern_key

    keys = ["lin_q", r"proc\.0\..*lin_o", "attention.lin_k", "k"]
    for mod in ["model.processor.proc.0.attention.lin_q", "model.processor.proc.0.attention.lin_o",
                "model.processor.proc.1.attention.lin_o", "model.processor.proc.1.attention.lin_k",
                "lin_q", "xlin_q", "a.k"]:
        assert pattern_key(keys, mod) == get_pattern_key(keys, mod)


def test_scale_rules() -> None:
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {"lin_v": 16},
           "alpha_pattern": {"lin_k": 2}}
    assert lora_scale(cfg, "a.lin_q") == 2.0 and lora_scale(cfg, "a.lin_v") == 0.5
    assert lora_scale(cfg, "a.lin_k") == 0.5
    assert lora_scale({**cfg, "use_rslora": True}, "a.lin_q") == 4.0
    assert lora_scale({**cfg, "use_rslora": True}, "a.lin_v") == 2.0


def test_keys_from_real_save_pretrained(tmp_path: Path) -> None:
    pm = _peft(_net(), use_dora=True, lora_bias=False, r=2, lora_alpha=2,
               target_modules=["lin_q", "node_emb"], modules_to_save=["proc.0.norm"])
    pm.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    modules, whole = group_keys(keys)
    q = "model.processor.proc.0.attention.lin_q"
    assert set(modules[q].parts) == {"lora_A", "lora_B", "magnitude"}
    assert set(modules["model.node_emb"].parts) == {"embedding_A", "embedding_B", "magnitude"}
    assert set(whole) == {"model.processor.proc.0.norm.weight", "model.processor.proc.0.norm.bias"}
    assert split_key(f"base_model.model.{q}.lora_B.bias") == (q, "lora_B_bias")
    assert base_tensor_name(q) == f"{q}.weight"
    assert base_tensor_name(q, "lora_B_bias") == f"{q}.bias"
    with pytest.raises(FormatError):
        split_key("base_model.model.x.lora_E.weight")


def test_refused_configs(tmp_path: Path) -> None:
    net = _net()
    base = _base(tmp_path, net)
    adapter = _import(_peft(net, **CASES["lora"]), tmp_path, base)
    with anemoi_ckpt.open(adapter) as ck:
        cfg = ck.metadata.model_extra["peft_config"]
        tensors = dict(ck.tensors().items())
        bad = []
        for i, change in enumerate([{"peft_type": "ADALORA"}, {"use_qalora": True},
                                    {"init_lora_weights": "pissa"}, {"target_parameters": ["w"]}]):
            path = tmp_path / f"bad{i}.anc"
            anemoi_ckpt.save(path, tensors, kind="adapter", metadata={
                "peft_config": {**cfg, **change}, "adapter": ck.metadata.model_extra["adapter"]})
            bad.append(path)
    for path in bad:
        with pytest.raises(FormatError, match=str(path)):
            merge(base, [path], tmp_path / "out.anc")
    assert not (tmp_path / "out.anc").exists()


def test_option_errors(tmp_path: Path) -> None:
    net = _net()
    base = _base(tmp_path, net)
    adapter = _import(_peft(net, **CASES["lora"]), tmp_path, base)
    out = tmp_path / "out.anc"
    for kwargs in [dict(method="nope"), dict(weights=[1.0, 2.0]), dict(method="ties"),
                   dict(method="ties", density=0.0), dict(method="dare_linear", density=1.5),
                   dict(method="svd"), dict(method="linear", density=0.5), dict(weights=[float("nan")]),
                   dict(method="linear", rank=2)]:
        with pytest.raises(UsageError):
            merge(base, [adapter], out, **kwargs)
    with pytest.raises(UsageError, match="output is an input"):
        merge(base, [adapter], adapter)
    assert not out.exists()


# --- the CLI: one line, right exit status, nothing written ----------------------------------------

@pytest.fixture
def cli_files(tmp_path: Path) -> dict[str, Path]:
    net = _net()
    base = _base(tmp_path, net)
    adapter = _import(_peft(net, **CASES["lora"]), tmp_path, base)
    other = _import(_peft(net, **CASES["lora"]), tmp_path, base, "stranger", base_content_id="sha256:" + "0" * 64)
    return {"base": base, "adapter": adapter, "other": other, "dir": tmp_path}


def _refused(cli_files: dict[str, Path], *args: str, code: int = 1) -> str:
    out = cli_files["dir"] / "out.anc"
    res = run_cli("merge", *map(str, args), "-o", str(out))
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anemoi-ckpt: error:"), res.stderr
    assert "Traceback" not in res.stderr and not out.exists()
    return lines[0]


def test_cli_merge_prints_path(cli_files: dict[str, Path]) -> None:
    res = run_cli("merge", str(cli_files["base"]), str(cli_files["adapter"]))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(cli_files["dir"] / "base+lora.anc")
    res = run_cli("merge", str(cli_files["base"]), str(cli_files["adapter"]), "-o",
                  str(cli_files["dir"] / "j.anc"), "--method", "svd", "--rank", "2", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["method"] == "svd"


def test_cli_base_mismatch_and_force(cli_files: dict[str, Path]) -> None:
    line = _refused(cli_files, cli_files["base"], cli_files["other"])
    assert "stranger" in line and "--force" in line
    out = cli_files["dir"] / "forced.anc"
    res = run_cli("merge", str(cli_files["base"]), str(cli_files["other"]), "-o", str(out), "--force")
    assert res.returncode == 0, res.stderr
    with anemoi_ckpt.open(out) as ck:
        params = ck.lineage.records[0].parameters
        assert params["forced"] is True and params["forced_adapters"] == ["stranger"]


def test_cli_module_missing_in_base(cli_files: dict[str, Path]) -> None:
    small = cli_files["dir"] / "small.anc"
    with anemoi_ckpt.open(cli_files["base"]) as bk:
        sd = {k: v for k, v in bk.tensors().items() if "proc.1.attention.lin_q" not in k}
    anemoi_ckpt.save(small, sd)
    line = _refused(cli_files, small, cli_files["adapter"], "--force")
    assert "proc.1.attention.lin_q.weight" in line and "not in the base" in line


def test_cli_shape_mismatch(cli_files: dict[str, Path]) -> None:
    wide = cli_files["dir"] / "wide.anc"
    with anemoi_ckpt.open(cli_files["base"]) as bk:
        sd = dict(bk.tensors().items())
    sd["model.processor.proc.0.attention.lin_k.weight"] = torch.zeros(H, H + 1)
    anemoi_ckpt.save(wide, sd)
    line = _refused(cli_files, wide, cli_files["adapter"], "--force")
    assert "shape" in line and "lin_k" in line


def test_cli_usage_errors_exit_2(cli_files: dict[str, Path]) -> None:
    line = _refused(cli_files, cli_files["base"], cli_files["adapter"], "--method", "slerp", code=2)
    assert "unknown merge method 'slerp'" in line
    # the other option errors are the same UsageError path, checked in-process (test_option_errors)
    assert "--weights 'x'" in _refused(cli_files, cli_files["base"], cli_files["adapter"], "--weights", "x", code=2)


# --- the other adapter writers of this package: convert --base, attach, split ---------------------

def test_converted_and_attached_adapters_merge(tmp_path: Path) -> None:
    from anemoi_ckpt.adapters import attach

    net = _net()
    base = _base(tmp_path, net)
    pm = _peft(net, **CASES["dora"])
    folder = tmp_path / "peft"
    pm.save_pretrained(folder)
    converted = tmp_path / "converted.anc"
    anemoi_ckpt.convert(folder, converted, base=base)
    expected = pm.merge_and_unload().state_dict()
    _assert_close(Path(merge(base, [converted], tmp_path / "a.anc", durable=False).path), expected)
    carrier = attach(base, converted, tmp_path / "carrier.anc", name="dora")
    _assert_close(Path(merge(base, [carrier], tmp_path / "b.anc", durable=False).path), expected)


def _finetune(net: Net) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    for k in ("model.processor.proc.0.attention.lin_q.weight", "model.processor.proc.1.mlp.0.weight"):
        out, inp = sd[k].shape
        sd[k] += torch.randn(out, 2, generator=g) @ torch.randn(2, inp, generator=g) * 0.1  # rank 2
    sd["model.processor.proc.0.attention.lin_q.bias"] += 0.5
    sd["model.processor.proc.1.norm.weight"] *= 1.5
    return sd


@pytest.mark.parametrize("kind", ["lora", "delta"])
def test_merge_of_split_reproduces_the_finetune(tmp_path: Path, kind: str) -> None:
    from anemoi_ckpt.adapters import split

    net = _net()
    base = _base(tmp_path, net)
    ft_sd = _finetune(net)
    ft = tmp_path / "ft.anc"
    anemoi_ckpt.save(ft, ft_sd)
    adapter = tmp_path / "split.anc"
    split(ft, base, adapter, **({"rank": 4} if kind == "lora" else {}), kind=kind)
    report = merge(base, [adapter], tmp_path / "again.anc", durable=False)
    with anemoi_ckpt.open(report.path) as ck:
        for k, want in ft_sd.items():
            got = ck.tensors()[k]
            if kind == "delta":
                assert torch.equal(got, want), k
            else:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_pooled_buffer_is_never_an_alias(tmp_path: Path) -> None:
    """merge reuses a few buffers for the tensors it writes: the same address and shape then
    mean new bytes, not a second name for the earlier tensor (a silently wrong merge)."""
    buf = torch.arange(6, dtype=torch.float32).view(2, 3)
    with anemoi_ckpt.Writer(tmp_path / "x.anc") as w:
        w.add("a", buf, detect_alias=False)
        w.add("b", buf, detect_alias=False)
    with anemoi_ckpt.open(tmp_path / "x.anc") as ck:
        bt = ck.tensors("weights")
        assert not bt.aliases and set(bt.entries) == {"a", "b"}
        assert torch.equal(bt["a"], buf) and torch.equal(bt["b"], buf)
