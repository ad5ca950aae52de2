"""split: fine-tune minus base as a PEFT LoRA adapter (checked in real PEFT) or a freeze delta."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import save_file
from click.testing import CliRunner
from torch import nn

import anemoi_ckpt
from anemoi_ckpt.adapters import read_adapters, split, split_attached
from anemoi_ckpt.adapters.split import PREFIX, plan_whole
from anemoi_ckpt.adapters.svd import factorise
from anemoi_ckpt.errors import FormatError, UsageError

from tests.conftest import run_cli


# --- a small model and its fine-tune --------------------------------------------------------------
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(12, 24)
        self.norm = nn.LayerNorm(24)
        self.blocks = nn.ModuleList([nn.Linear(24, 24), nn.Linear(24, 24)])
        self.head = nn.Linear(24, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.enc(x))
        for b in self.blocks:
            x = torch.tanh(b(x))
        return self.head(x)


def low_rank(out_f: int, in_f: int, r: int, gen: torch.Generator, scale: float = 0.1) -> torch.Tensor:
    return (torch.randn(out_f, r, generator=gen) @ torch.randn(r, in_f, generator=gen)) * scale


R = 3
#: exact delta ranks per module of the fine-tune (all <= R)
RANKS = {"enc": 2, "blocks.0": 3, "head": 1}


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, dict, dict]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    base = {k: v.detach().clone() for k, v in Net().state_dict().items()}
    ft = {k: v.clone() for k, v in base.items()}
    for mod, r in RANKS.items():
        w = ft[f"{mod}.weight"]
        ft[f"{mod}.weight"] = w + low_rank(*w.shape, r, gen)
    ft["blocks.0.bias"] = ft["blocks.0.bias"] + 0.05
    ft["norm.weight"] = ft["norm.weight"] * 1.5
    anemoi_ckpt.save(tmp_path / "base.anc", base)
    anemoi_ckpt.save(tmp_path / "ft.anc", ft)
    return tmp_path / "ft.anc", tmp_path / "base.anc", ft, base


def adapter_of(path: Path) -> tuple[dict, dict, dict]:
    with anemoi_ckpt.open(path) as ck:
        md = dict(ck.metadata.model_extra or {})
        tensors = {k: v.clone() for k, v in ck.tensors().items()}
        assert ck.kind == "adapter"
    return md["peft_config"], md["adapter"], tensors


def model_with(sd: dict) -> Net:
    m = Net()
    m.load_state_dict(sd)
    return m.eval()


def peft_folder(path: Path, out: Path) -> Path:
    cfg, _, tensors = adapter_of(path)
    out.mkdir()
    save_file(tensors, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


# --- svd -----------------------------------------------------------------------------------------
def spectrum(out_f: int, in_f: int, s: list[float], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out_f, len(s), generator=gen))
    v, _ = torch.linalg.qr(torch.randn(in_f, len(s), generator=gen))
    return u @ torch.diag(torch.tensor(s)) @ v.T


def test_factorise_exact_low_rank_and_split_singular_values() -> None:
    d = spectrum(40, 30, [5.0, 3.0, 1.0])
    f = factorise(d, rank=8)
    assert f.rank == 3  # capped at the numerical rank
    assert f.A.shape == (3, 30) and f.B.shape == (40, 3)
    torch.testing.assert_close(f.B @ f.A, d, atol=1e-5, rtol=0)
    assert f.rel_error < 1e-5 and f.retained_energy == pytest.approx(1.0, abs=1e-6)
    # sqrt(S) on each side: both factors carry the same per-direction scale
    torch.testing.assert_close((f.A * f.A).sum(1), (f.B * f.B).sum(0), rtol=1e-5, atol=0)
    torch.testing.assert_close((f.A * f.A).sum(1), torch.tensor([5.0, 3.0, 1.0]), rtol=1e-5, atol=0)


def test_factorise_truncation_error_is_the_true_residual() -> None:
    d = spectrum(50, 35, [4.0, 2.0, 1.0, 0.5, 0.25])
    for randomized in (False, True):
        f = factorise(d, rank=2, randomized=randomized)
        true = float(torch.linalg.norm(d - f.B @ f.A) / torch.linalg.norm(d))
        assert f.rank == 2
        assert f.rel_error == pytest.approx(true, rel=1e-4)
        assert f.rel_error == pytest.approx(math.sqrt((1 + 0.25 + 0.0625) / 21.3125), rel=1e-4)
        assert f.retained_energy == pytest.approx(20 / 21.3125, rel=1e-5)


@pytest.mark.parametrize("energy, expected", [(0.5, 1), (0.75, 1), (0.9, 2), (0.98, 3), (0.99, 4), (1.0, 4)])
def test_factorise_energy_picks_smallest_rank(energy: float, expected: int) -> None:
    # energies: 16, 4, 1, 0.25 of 21.25 -> cumulative 0.753, 0.941, 0.988, 1.0
    f = factorise(spectrum(20, 20, [4.0, 2.0, 1.0, 0.5]), energy=energy)
    assert f.rank == expected
    assert f.retained_energy >= energy - 1e-6


def test_randomized_close_to_exact_on_decaying_spectrum() -> None:
    s = [float(0.8 ** i) for i in range(60)]
    d = spectrum(300, 200, s, seed=3)
    exact = factorise(d, rank=16)
    rand = factorise(d, rank=16, randomized=True, seed=7)
    assert rand.rank == exact.rank == 16
    assert abs(rand.rel_error - exact.rel_error) < 1e-3 * exact.rel_error + 1e-6
    again = factorise(d, rank=16, randomized=True, seed=7)
    assert torch.equal(again.A, rand.A)  # seeded: reproducible


def test_factorise_zero_and_bad_arguments() -> None:
    f = factorise(torch.zeros(5, 4), rank=2)
    assert (f.rank, f.rel_error, f.A.shape, f.B.shape) == (0, 0.0, (0, 4), (5, 0))
    for kw in ({}, {"rank": 1, "energy": 0.5}, {"rank": 0}, {"energy": 1.5},
               {"energy": 0.9, "randomized": True}):
        with pytest.raises(ValueError):
            factorise(torch.ones(3, 3), **kw)


# --- split: content -------------------------------------------------------------------------------
def test_split_reproduces_low_rank_deltas(pair) -> None:
    ft_p, base_p, ft, base = pair
    report = split(ft_p, base_p, rank=R)
    assert Path(report.out) == ft_p.with_name("ft-lora.anc")
    cfg, info, tensors = adapter_of(Path(report.out))
    assert {m.name: m.rank for m in report.modules} == RANKS
    for m in report.modules:
        assert m.rel_error < 1e-5 and m.retained_energy == pytest.approx(1.0, abs=1e-5)
        a = tensors[f"{PREFIX}{m.name}.lora_A.weight"]
        b = tensors[f"{PREFIX}{m.name}.lora_B.weight"]
        delta = ft[f"{m.name}.weight"] - base[f"{m.name}.weight"]
        torch.testing.assert_close(b @ a, delta, atol=1e-6, rtol=1e-5)
    # the bias of a factorised module rides on lora_B.bias; others of them are zeros
    torch.testing.assert_close(tensors[f"{PREFIX}blocks.0.lora_B.bias"],
                               ft["blocks.0.bias"] - base["blocks.0.bias"])
    assert not tensors[f"{PREFIX}enc.lora_B.bias"].any()
    # the norm is a whole module replacement, as PEFT's save_pretrained stores it
    assert torch.equal(tensors[f"{PREFIX}norm.weight"], ft["norm.weight"])
    assert torch.equal(tensors[f"{PREFIX}norm.bias"], ft["norm.bias"])
    assert report.whole == {"blocks.0.bias": "lora_bias", "norm.weight": "modules_to_save"}
    # unchanged tensors (blocks.1, the biases of enc, norm and head) are left out
    assert not any("blocks.1" in k for k in tensors)
    assert report.unchanged == 5
    assert cfg["target_modules"] == sorted(RANKS) and cfg["modules_to_save"] == ["norm"]
    assert cfg["r"] == cfg["lora_alpha"] == 3 and cfg["lora_bias"] is True
    assert cfg["rank_pattern"] == cfg["alpha_pattern"] == {"enc": 2, "head": 1}
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] is None
    with anemoi_ckpt.open(base_p) as b, anemoi_ckpt.open(report.out) as ck:
        assert info == {"name": "ft-lora", "base_content_id": b.content_id, "base_uuid": b.uuid}
        own = ck.lineage.records[0]
        assert own.operation == "split" and own.kind == "adapter"
        assert own.parameters == {"rank": R, "energy": None, "targets": None, "randomized": True}
        with anemoi_ckpt.open(ft_p) as f:
            assert [p.uuid for p in own.parents] == [f.uuid, b.uuid]
        assert read_adapters(ck)[0].kind == "lora"
    d = report.to_dict()
    assert d["totals"]["modules"] == 3 and d["totals"]["rel_error"] < 1e-5
    json.dumps(d)


def test_split_loads_in_peft_and_gives_the_finetuned_outputs(pair, tmp_path: Path) -> None:
    ft_p, base_p, ft, base = pair
    report = split(ft_p, base_p, rank=R, randomized=False)
    x = torch.randn(7, 12)
    want = model_with(ft)(x)
    # 1. a PEFT folder loaded by PeftModel.from_pretrained
    folder = peft_folder(Path(report.out), tmp_path / "peft")
    pm = PeftModel.from_pretrained(model_with(base), folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(x), want, atol=1e-5, rtol=0)
        # PEFT's own merge gives the fine-tune back as well
        merged = pm.merge_and_unload().state_dict()
    for k in ft:
        torch.testing.assert_close(merged[k], ft[k], atol=1e-5, rtol=0)
    # 2. LoraConfig(**cfg) + get_peft_model + set_peft_model_state_dict
    cfg, _, tensors = adapter_of(Path(report.out))
    pm2 = get_peft_model(model_with(base), LoraConfig(**cfg)).eval()
    res = set_peft_model_state_dict(pm2, tensors)
    assert not res.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(pm2(x), want, atol=1e-5, rtol=0)


def test_split_higher_true_rank_reports_true_error(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(5)
    base = {k: v.detach().clone() for k, v in Net().state_dict().items()}
    ft = dict(base, **{"blocks.1.weight": base["blocks.1.weight"] + low_rank(24, 24, 8, gen)})
    anemoi_ckpt.save(tmp_path / "b.anc", base)
    anemoi_ckpt.save(tmp_path / "f.anc", ft)
    for exact in (True, False):
        rep = split(tmp_path / "f.anc", tmp_path / "b.anc", tmp_path / f"o{exact}.anc", rank=3,
                    randomized=not exact)
        _, _, t = adapter_of(tmp_path / f"o{exact}.anc")
        delta = ft["blocks.1.weight"] - base["blocks.1.weight"]
        approx = t[f"{PREFIX}blocks.1.lora_B.weight"] @ t[f"{PREFIX}blocks.1.lora_A.weight"]
        true = float(torch.linalg.norm(delta - approx) / torch.linalg.norm(delta))
        (m,) = rep.modules
        assert m.rank == 3 and true > 0.05
        assert m.rel_error == pytest.approx(true, rel=1e-4)


def test_split_energy_mode(pair, tmp_path: Path) -> None:
    ft_p, base_p, _, _ = pair
    rep = split(ft_p, base_p, tmp_path / "e.anc", energy=1.0)
    assert {m.name: m.rank for m in rep.modules} == RANKS
    rep = split(ft_p, base_p, tmp_path / "e1.anc", energy=1e-9)
    assert all(m.rank == 1 for m in rep.modules)
    with anemoi_ckpt.open(tmp_path / "e1.anc") as ck:
        assert ck.lineage.records[0].parameters["energy"] == 1e-9
        assert ck.lineage.records[0].parameters["randomized"] is False


def test_split_targets_keep_other_weights_whole(pair, tmp_path: Path) -> None:
    ft_p, base_p, ft, base = pair
    rep = split(ft_p, base_p, tmp_path / "t.anc", rank=R, targets=["enc", "*.weight-none"])
    assert [m.name for m in rep.modules] == ["enc"]
    cfg, _, tensors = adapter_of(tmp_path / "t.anc")
    assert sorted(cfg["modules_to_save"]) == ["blocks.0", "head", "norm"]
    assert torch.equal(tensors[f"{PREFIX}head.weight"], ft["head.weight"])
    assert cfg["lora_bias"] is False
    folder = peft_folder(tmp_path / "t.anc", tmp_path / "peft")
    pm = PeftModel.from_pretrained(model_with(base), folder).eval()
    x = torch.randn(4, 12)
    with torch.no_grad():
        torch.testing.assert_close(pm(x), model_with(ft)(x), atol=1e-5, rtol=0)


def test_plan_whole_rules() -> None:
    names = ["scale", "a.weight", "a.bias", "a.extra", "blk.x", "blk.n.weight", "blk.n.bias", "c.w"]
    how, mts, lora_bias = plan_whole(["scale", "a.bias", "a.extra", "blk.x", "blk.n.weight"],
                                     {"a"}, names)
    assert how == {"scale": "delta", "a.bias": "lora_bias", "a.extra": "delta",
                   "blk.x": "modules_to_save", "blk.n.weight": "modules_to_save",
                   "blk.n.bias": "modules_to_save"}
    assert mts == ["blk"] and lora_bias


def test_split_root_parameter_goes_to_delta_section(tmp_path: Path) -> None:
    base = {"scale": torch.ones(3), "lin.weight": torch.randn(4, 3)}
    ft = {"scale": torch.full((3,), 2.0), "lin.weight": base["lin.weight"] + 1.0}
    anemoi_ckpt.save(tmp_path / "b.anc", base)
    anemoi_ckpt.save(tmp_path / "f.anc", ft)
    with pytest.warns(UserWarning, match="PEFT cannot express"):
        rep = split(tmp_path / "f.anc", tmp_path / "b.anc", tmp_path / "o.anc", rank=1)
    assert rep.whole == {"scale": "delta"}
    with anemoi_ckpt.open(tmp_path / "o.anc") as ck:
        assert ck.metadata.model_extra["adapter"]["delta_section"] == "delta"
        assert torch.equal(ck.tensors("delta")["scale"], ft["scale"])


def test_split_delta_kind(pair, tmp_path: Path) -> None:
    ft_p, base_p, ft, _ = pair
    rep = split(ft_p, base_p, tmp_path / "d.anc", kind="delta")
    changed = {"enc.weight", "blocks.0.weight", "blocks.0.bias", "head.weight", "norm.weight"}
    assert set(rep.whole) == changed
    with anemoi_ckpt.open(tmp_path / "d.anc") as ck, anemoi_ckpt.open(base_p) as b:
        assert ck.kind == "delta"
        assert set(ck.tensors()) == changed
        assert all(torch.equal(ck.tensors()[n], ft[n]) for n in changed)
        (ad,) = read_adapters(ck)
        assert ad.kind == "delta" and ad.base_content_id == b.content_id


def test_split_attached(pair, tmp_path: Path) -> None:
    ft_p, base_p, _, base = pair
    split(ft_p, base_p, tmp_path / "a.anc", rank=R)
    cfg, info, tensors = adapter_of(tmp_path / "a.anc")
    md = {"adapters": {"regional": {"section": "adapter-regional", "peft_config": cfg,
                                    "base_content_id": info["base_content_id"],
                                    "base_uuid": info["base_uuid"]}}}
    anemoi_ckpt.save(tmp_path / "with.anc", base, metadata=md,
                     sections={"adapter-regional": tensors})
    (out,) = split_attached(tmp_path / "with.anc", tmp_path / "outdir")
    assert out == str(tmp_path / "outdir" / "regional.anc")
    cfg2, info2, tensors2 = adapter_of(Path(out))
    assert cfg2 == cfg and info2 == {**info, "name": "regional"}
    assert tensors2.keys() == tensors.keys() and all(torch.equal(tensors2[k], tensors[k]) for k in tensors)
    with pytest.raises(UsageError, match="no attached adapters"):
        split_attached(base_p, tmp_path / "none")


# --- refusals --------------------------------------------------------------------------------------
def test_split_refusals_write_nothing(pair, tmp_path: Path) -> None:
    ft_p, base_p, ft, base = pair
    other = dict(base)
    other["extra.weight"] = torch.zeros(2, 2)
    anemoi_ckpt.save(tmp_path / "other.anc", other)
    shaped = dict(base, **{"head.weight": torch.zeros(5, 24)})
    anemoi_ckpt.save(tmp_path / "shaped.anc", shaped)
    anemoi_ckpt.save(tmp_path / "same.anc", base)
    before = set(os.listdir(tmp_path))
    cases = [
        (FormatError, "extra.weight", dict(finetuned=tmp_path / "other.anc", base=base_p, rank=2)),
        (FormatError, "head.weight", dict(finetuned=tmp_path / "shaped.anc", base=base_p, rank=2)),
        (UsageError, "exactly one", dict(finetuned=ft_p, base=base_p)),
        (UsageError, "exactly one", dict(finetuned=ft_p, base=base_p, rank=2, energy=0.9)),
        (UsageError, "equals the base", dict(finetuned=tmp_path / "same.anc", base=base_p, rank=2)),
        (UsageError, "one of the inputs", dict(finetuned=ft_p, base=base_p, out=base_p, rank=2)),
        (UsageError, "same file", dict(finetuned=ft_p, base=ft_p, rank=2)),
        (UsageError, "randomized", dict(finetuned=ft_p, base=base_p, energy=0.9, randomized=True)),
        (UsageError, "no changed tensor can be factorised",
         dict(finetuned=ft_p, base=base_p, rank=2, targets=["nothing*"])),
    ]
    for exc, match, kw in cases:
        with pytest.raises(exc, match=match):
            split(**kw)
    assert set(os.listdir(tmp_path)) == before


# --- CLI -------------------------------------------------------------------------------------------
def test_cli_split_text_and_json(pair, tmp_path: Path) -> None:
    ft_p, base_p, _, _ = pair
    r = run_cli("split", str(ft_p), "--base", str(base_p), "--rank", "3", "-o", str(tmp_path / "c.anc"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(ln.split()[:3] == ["enc", "rank", "2"] for ln in lines)
    assert "kept whole (modules_to_save)" in r.stdout and "wrote" in lines[-1]
    r = run_cli("split", str(ft_p), "--base", str(base_p), "--energy", "0.99", "--exact-svd",
                "-o", str(tmp_path / "j.anc"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["kind"] == "lora" and {m["name"] for m in d["modules"]} == set(RANKS)
    r = run_cli("split", str(ft_p), "--base", str(base_p), "--delta", "-o", str(tmp_path / "d.anc"))
    assert r.returncode == 0, r.stderr
    with anemoi_ckpt.open(tmp_path / "d.anc") as ck:
        assert ck.kind == "delta"


@pytest.mark.parametrize("args, code", [
    (["--rank", "2", "--energy", "0.5"], 2),
    ([], 2),
    (["--rank", "0"], 2),
    (["--energy", "1.5"], 2),
    (["--rank", "2", "-o", "{base}"], 2),
    (["--rank", "2", "--base-is-ft"], 2),
    (["--rank", "2", "--base-is-bad"], 1),
])
def test_cli_split_errors(pair, tmp_path: Path, args: list[str], code: int) -> None:
    """In process (fast); the subprocess tests below check the real entry point."""
    import anemoi_ckpt.cli.split_cmds  # noqa: F401 - registers 'split' as main() does
    from anemoi_ckpt.cli.main import cli

    ft_p, base_p, _, _ = pair
    bad = tmp_path / "bad.anc"
    bad.write_bytes(b"not a zip")
    base = str(ft_p) if "--base-is-ft" in args else str(bad) if "--base-is-bad" in args else str(base_p)
    args = [a.replace("{base}", str(base_p)) for a in args if not a.startswith("--base-is")]
    before = set(os.listdir(tmp_path))
    r = CliRunner().invoke(cli, ["split", str(ft_p), "--base", base, *args], prog_name="anemoi-ckpt")
    assert r.exit_code == code, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("anemoi-ckpt: error: ") and r.stdout == ""
    assert set(os.listdir(tmp_path)) == before


def test_cli_split_bad_input_exit_1(pair, tmp_path: Path) -> None:
    ft_p, _, _, _ = pair
    bad = tmp_path / "bad.anc"
    bad.write_bytes(b"not a zip")
    r = run_cli("split", str(ft_p), "--base", str(bad), "--rank", "2")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ft-lora.anc").exists()
    r = run_cli("split", str(ft_p), "--attached")
    assert r.returncode == 2 and "-o DIR" in r.stderr


# --- merge round trip (merge is built beside split) -----------------------------------------------
def test_merge_of_split_is_the_finetune(pair, tmp_path: Path) -> None:
    merge_mod = pytest.importorskip("anemoi_ckpt.adapters.merge")
    ft_p, base_p, ft, _ = pair
    rep = split(ft_p, base_p, tmp_path / "l.anc", rank=R)
    merge_mod.merge(base_p, [rep.out], tmp_path / "m.anc")
    with anemoi_ckpt.open(tmp_path / "m.anc") as ck:
        for k, v in ft.items():
            torch.testing.assert_close(ck.tensors()[k], v, atol=1e-6, rtol=1e-5)
    split(ft_p, base_p, tmp_path / "dd.anc", kind="delta")
    merge_mod.merge(base_p, [tmp_path / "dd.anc"], tmp_path / "md.anc")
    with anemoi_ckpt.open(tmp_path / "md.anc") as ck:
        assert all(torch.equal(ck.tensors()[k], v) for k, v in ft.items())


# --- property --------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(out_f=st.integers(1, 48), in_f=st.integers(1, 48), r=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1), randomized=st.booleans())
def test_random_low_rank_deltas_recovered_at_their_rank(out_f: int, in_f: int, r: int, seed: int,
                                                        randomized: bool) -> None:
    r = min(r, out_f, in_f)
    d = spectrum(out_f, in_f, [float(2.0 ** -i) + 0.5 for i in range(r)], seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = factorise(d, rank=r, randomized=randomized, seed=seed)
    assert f.rank == r
    torch.testing.assert_close(f.B @ f.A, d, atol=2e-6, rtol=0)
    assert f.rel_error < 1e-5
