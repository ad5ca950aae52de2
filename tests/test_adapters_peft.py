"""PEFT adapters both ways: a folder written by peft's save_pretrained -> ``convert --base`` ->
``adapters export`` gives the folder back bit for bit and PeftModel.from_pretrained loads it;
base checks refuse misfits with one line; attach/detach/list keep named adapters unmerged.

Every adapter is made by the real peft; nothing is mocked.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import anemoi_ckpt
from anemoi_ckpt.adapters import attach, check_adapter, detach, export_peft, list_adapters
from anemoi_ckpt.errors import FormatError, UsageError
from tests.conftest import run_cli

peft = pytest.importorskip("peft")


class Net(torch.nn.Module):
    """Embedding, two hidden linears and a head: every kind of layer LoRA targets here."""

    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.lin = torch.nn.Linear(8, hidden)
        self.lin2 = torch.nn.Linear(hidden, hidden)
        self.head = torch.nn.Linear(hidden, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.lin(self.emb(idx)))
        return self.head(torch.relu(self.lin2(h)))


VARIANTS: dict[str, dict[str, Any]] = {
    "lora": {"target_modules": ["lin", "lin2"]},
    "rslora": {"target_modules": ["lin", "lin2", "head"], "use_rslora": True},
    "patterns": {"target_modules": ["lin", "lin2", "head"], "rank_pattern": {"lin2": 3},
                 "alpha_pattern": {"head": 7}},
    "dora": {"target_modules": ["lin", "lin2"], "use_dora": True},
    "modules_to_save": {"target_modules": ["lin"], "modules_to_save": ["head"]},
    "embedding": {"target_modules": ["emb", "lin"]},
}


def base_model() -> Net:
    torch.manual_seed(0)
    return Net()


def make_adapter(folder: Path, r: int = 2, alpha: int = 4, seed: int = 1, **kwargs: Any) -> Any:
    """A trained-looking adapter saved by peft on base_model(); returns the PeftModel."""
    model = peft.get_peft_model(base_model(), peft.LoraConfig(r=r, lora_alpha=alpha, **kwargs))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # lora_B starts at zero: make the adapter change the output
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    return model.eval()


def save_base(path: Path, model: torch.nn.Module | None = None) -> Path:
    anemoi_ckpt.save(path, (model or base_model()).state_dict())
    return path


def raw_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    fa, fb = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    return fa.numel() == 0 or torch.equal(fa.view(torch.uint8), fb.view(torch.uint8))


def assert_same_folder(a: Path, b: Path) -> None:
    """Same tensors bit for bit (keys, dtypes, shapes, bytes) and the same config content."""
    ta = safetensors.torch.load_file(a / "adapter_model.safetensors")
    tb = safetensors.torch.load_file(b / "adapter_model.safetensors")
    assert ta.keys() == tb.keys()
    assert all(raw_equal(ta[k], tb[k]) for k in ta)
    assert json.loads((a / "adapter_config.json").read_text()) == json.loads((b / "adapter_config.json").read_text())


IDX = torch.tensor([[0, 3, 9, 4], [1, 1, 7, 2]])


# --- PEFT folder -> .anc -> PEFT folder ----------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_round_trip_bit_exact_and_loads(tmp_path: Path, variant: str) -> None:
    model = make_adapter(tmp_path / "lora", **VARIANTS[variant])
    base = save_base(tmp_path / "base.anc")
    report = anemoi_ckpt.convert(tmp_path / "lora", tmp_path / "lora.anc", base=base)
    assert report.kind == "adapter"
    export_peft(tmp_path / "lora.anc", tmp_path / "out")
    assert_same_folder(tmp_path / "lora", tmp_path / "out")
    # PEFT's own formatting is reproduced: the files are the very bytes peft wrote
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "lora" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_config.json",
                                                                     "adapter_model.safetensors"]
    loaded = peft.PeftModel.from_pretrained(base_model(), tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(loaded(IDX), model(IDX))
        assert not torch.equal(loaded(IDX), base_model()(IDX))  # the adapter does something


def test_convert_records_base_and_lineage(tmp_path: Path) -> None:
    make_adapter(tmp_path / "regional", target_modules=["lin"])
    base = save_base(tmp_path / "base.anc")
    anemoi_ckpt.convert(tmp_path / "regional", tmp_path / "lora.anc", base=base)
    with anemoi_ckpt.open(base) as b, anemoi_ckpt.open(tmp_path / "lora.anc") as ck:
        md = ck.metadata.model_extra
        assert md["adapter"] == {"name": "regional", "base_content_id": b.content_id, "base_uuid": b.uuid}
        assert md["peft_config"] == json.loads((tmp_path / "regional" / "adapter_config.json").read_text())
        (parent,) = ck.lineage.records[0].parents
        assert (parent.uuid, parent.content_id, parent.role) == (b.uuid, b.content_id, "base")
        assert ck.verify().ok


def test_convert_without_base_warns_and_records_none(tmp_path: Path) -> None:
    make_adapter(tmp_path / "lora", target_modules=["lin"])
    out = run_cli("convert", str(tmp_path / "lora"), str(tmp_path / "lora.anc"))
    assert out.returncode == 0, out.stderr
    assert "no --base given" in out.stderr and "--force" in out.stderr
    with anemoi_ckpt.open(tmp_path / "lora.anc") as ck:
        assert ck.metadata.model_extra["adapter"]["base_content_id"] is None
        assert ck.lineage.records[0].parents == []
    # attaching an adapter of unknown base needs --force
    base = save_base(tmp_path / "base.anc")
    with pytest.raises(FormatError, match="records no base model"):
        attach(base, tmp_path / "lora.anc", tmp_path / "x.anc")
    assert not (tmp_path / "x.anc").exists()
    attach(base, tmp_path / "lora.anc", tmp_path / "x.anc", force=True)
    assert list_adapters(tmp_path / "x.anc")[0]["matches_file"] is False


# --- base checks through the CLI -----------------------------------------------------------------
class NoLin2(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.lin, self.head = torch.nn.Embedding(10, 8), torch.nn.Linear(8, 6), torch.nn.Linear(6, 3)


@pytest.mark.parametrize("case", ["missing-module", "shape", "dora-magnitude", "modules-to-save"])
def test_base_misfit_one_line_exit_1_nothing_written(tmp_path: Path, case: str) -> None:
    kwargs = {"missing-module": {"target_modules": ["lin", "lin2"]},
              "shape": {"target_modules": ["lin"]},
              "dora-magnitude": {"target_modules": ["lin"], "use_dora": True},
              "modules-to-save": {"target_modules": ["lin"], "modules_to_save": ["head"]}}[case]
    make_adapter(tmp_path / "lora", **kwargs)
    if case == "missing-module":
        base, key, tensor = NoLin2(), "base_model.model.lin2.lora_A.weight", "lin2.weight"
    else:  # a base whose layer has other sizes than the one the adapter was trained on
        base, key, tensor = Net(hidden=5), "base_model.model.lin.lora_B.weight", "lin.weight"
        if case == "modules-to-save":
            base.lin = torch.nn.Linear(8, 6)
            key, tensor = "base_model.model.head.weight", "head.weight"
    save_base(tmp_path / "base.anc", base)
    # a dry run checks too (from the headers alone); once is enough to show it
    for extra in ([], ["--dry-run"]) if case == "missing-module" else ([],):
        out = run_cli("convert", str(tmp_path / "lora"), str(tmp_path / "lora.anc"),
                      "--base", str(tmp_path / "base.anc"), *extra)
        assert out.returncode == 1, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("anemoi-ckpt: error: ") and repr(key) in line and repr(tensor) in line
        assert not (tmp_path / "lora.anc").exists()
        assert not list(tmp_path.glob(".lora.anc.*"))


def test_base_for_a_model_source_is_usage_error(tmp_path: Path) -> None:
    safetensors.torch.save_file({"w": torch.ones(2)}, tmp_path / "m.safetensors")
    base = save_base(tmp_path / "base.anc")
    with pytest.raises(UsageError, match="--base applies to PEFT adapters"):
        anemoi_ckpt.convert(tmp_path / "m.safetensors", tmp_path / "m.anc", base=base)
    assert not (tmp_path / "m.anc").exists()


# --- attach / detach / list ----------------------------------------------------------------------
def test_attach_list_export_detach_round_trip(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base.anc")
    models = {}
    for name, kw in (("alps", VARIANTS["dora"]), ("storms", VARIANTS["patterns"])):
        models[name] = make_adapter(tmp_path / name, seed=len(name), **kw)
        anemoi_ckpt.convert(tmp_path / name, tmp_path / f"{name}.anc", base=base)
    one = run_cli("adapters", "attach", str(base), str(tmp_path / "alps.anc"), "-o", str(tmp_path / "one.anc"))
    assert one.returncode == 0, one.stderr
    two = run_cli("adapters", "attach", str(tmp_path / "one.anc"), str(tmp_path / "storms.anc"),
                  "-o", str(tmp_path / "two.anc"), "--name", "convective")
    assert two.returncode == 0, two.stderr

    with anemoi_ckpt.open(base) as b, anemoi_ckpt.open(tmp_path / "two.anc") as ck:
        assert ck.content_id == b.content_id  # attaching does not touch the weights
        assert ck.tensor_sections() == ["weights", "adapter-alps", "adapter-convective"]
        assert set(ck.metadata.model_extra["adapters"]) == {"alps", "convective"}
        rec = ck.lineage.records[0]
        assert rec.operation == "attach" and len(rec.parents) == 2
        assert ck.verify().ok
        base_content = b.content_id

    listed = run_cli("adapters", "list", str(tmp_path / "two.anc"), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["convective"] == {
        "name": "convective", "kind": "lora", "section": "adapter-convective", "peft_type": "LORA",
        "r": 2, "lora_alpha": 4, "target_modules": 3, "tensors": 6,
        "bytes": rows["convective"]["bytes"], "base_content_id": base_content,
        "base_uuid": rows["convective"]["base_uuid"], "matches_file": True}
    assert rows["alps"]["tensors"] == 6 and rows["alps"]["bytes"] > 0  # 2 modules x (A, B, magnitude)
    text = run_cli("adapters", "list", str(tmp_path / "two.anc"))
    assert text.returncode == 0 and "2 adapters" in text.stdout and "convective" in text.stdout

    # several adapters: export needs --name, and says which there are
    bad = run_cli("adapters", "export", str(tmp_path / "two.anc"), str(tmp_path / "x"))
    assert bad.returncode == 2 and "alps, convective" in bad.stderr and not (tmp_path / "x").exists()
    for name, folder in (("alps", "alps"), ("convective", "storms")):
        out = run_cli("adapters", "export", str(tmp_path / "two.anc"), str(tmp_path / f"x-{name}"),
                      "--name", name)
        assert out.returncode == 0, out.stderr
        assert_same_folder(tmp_path / folder, tmp_path / f"x-{name}")
    loaded = peft.PeftModel.from_pretrained(base_model(), tmp_path / "x-convective").eval()
    with torch.no_grad():
        assert torch.equal(loaded(IDX), models["storms"](IDX))

    det = run_cli("adapters", "detach", str(tmp_path / "two.anc"), "alps", "-o", str(tmp_path / "det.anc"))
    assert det.returncode == 0, det.stderr
    with anemoi_ckpt.open(tmp_path / "det.anc") as d, anemoi_ckpt.open(tmp_path / "two.anc") as t, \
            anemoi_ckpt.open(tmp_path / "one.anc") as o:
        assert d.content_id == base_content and d.tensor_sections() == ["weights", "adapter-convective"]
        assert list(d.metadata.model_extra["adapters"]) == ["convective"]
        assert d.lineage.records[0].operation == "detach"
        # the adapter tensors come back unchanged, and one.anc still has what two.anc had for alps
        for sec, other in (("adapter-convective", t), ("weights", t)):
            got, want = d.tensors(sec), other.tensors(sec)
            assert set(got) == set(want) and all(raw_equal(got[k], want[k]) for k in got)
        got, want = o.tensors("adapter-alps"), t.tensors("adapter-alps")
        assert all(raw_equal(got[k], want[k]) for k in got)
    last = detach(tmp_path / "det.anc", "convective", tmp_path / "bare.anc")
    with anemoi_ckpt.open(last) as ck, anemoi_ckpt.open(base) as b:
        assert "adapters" not in ck.metadata.model_extra and ck.tensor_sections() == ["weights"]
        assert all(raw_equal(ck.tensors()[k], b.tensors()[k]) for k in b.tensors())


def test_attach_refusals_write_nothing(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base.anc")
    make_adapter(tmp_path / "lora", target_modules=["lin"])
    anemoi_ckpt.convert(tmp_path / "lora", tmp_path / "lora.anc", base=base)
    one = attach(base, tmp_path / "lora.anc", tmp_path / "one.anc")
    # duplicate name
    with pytest.raises(UsageError, match="already has an adapter named 'lora'"):
        attach(one, tmp_path / "lora.anc", tmp_path / "dup.anc")
    # another model (same shapes, other values): content id mismatch, unless forced
    other = Net()
    save_base(tmp_path / "other.anc", other)
    with pytest.raises(FormatError, match="records base content id"):
        attach(tmp_path / "other.anc", tmp_path / "lora.anc", tmp_path / "o.anc")
    cli = run_cli("adapters", "attach", str(tmp_path / "other.anc"), str(tmp_path / "lora.anc"),
                  "-o", str(tmp_path / "o.anc"))
    assert cli.returncode == 1 and "--force" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    assert not any(p.name in ("dup.anc", "o.anc") for p in tmp_path.iterdir())
    forced = attach(tmp_path / "other.anc", tmp_path / "lora.anc", tmp_path / "o.anc", force=True)
    assert list_adapters(forced)[0]["matches_file"] is False
    # shapes are checked even with force
    save_base(tmp_path / "small.anc", Net(hidden=4))
    with pytest.raises(FormatError, match="lora_B"):
        attach(tmp_path / "small.anc", tmp_path / "lora.anc", tmp_path / "s.anc", force=True)
    # the output may never be an input; the CLI wants -o; a default name never overwrites
    with pytest.raises(FormatError, match="the output is the input"):
        attach(base, tmp_path / "lora.anc", base)
    assert run_cli("adapters", "attach", str(base), str(tmp_path / "lora.anc")).returncode == 2
    assert attach(base, tmp_path / "lora.anc", name="alps") == str(tmp_path / "base+alps.anc")
    with pytest.raises(UsageError, match="already exists"):
        attach(base, tmp_path / "lora.anc", name="alps")
    with pytest.raises(UsageError, match="no attached adapter 'nope'"):
        detach(one, "nope", tmp_path / "d.anc")
    with pytest.raises(UsageError, match="invalid adapter name"):
        attach(base, tmp_path / "lora.anc", tmp_path / "n.anc", name="a/b")


# --- compat, the pure check ----------------------------------------------------------------------
def test_check_adapter_rules() -> None:
    base = {"lin.weight": (6, 8), "lin.bias": (6,), "emb.weight": (10, 8), "conv.weight": (4, 3, 3, 3),
            "gpt.weight": (8, 6), "norm.weight": (6,)}
    p = "base_model.model."
    good = {p + "lin.lora_A.weight": (2, 8), p + "lin.lora_B.weight": (6, 2), p + "lin.lora_B.bias": (6,),
            p + "lin.lora_magnitude_vector": (6,), p + "emb.lora_embedding_A": (2, 10),
            p + "emb.lora_embedding_B": (8, 2), p + "conv.lora_A.weight": (2, 3, 3, 3),
            p + "conv.lora_B.weight": (4, 2, 1, 1), p + "norm.weight": (6,)}
    assert check_adapter(good, base, {}) == []
    # fan_in_fan_out layers store the weight as (in, out)
    assert check_adapter({p + "gpt.lora_A.weight": (2, 8), p + "gpt.lora_B.weight": (6, 2)}, base,
                         {"fan_in_fan_out": True}) == []
    assert len(check_adapter({p + "gpt.lora_A.weight": (2, 8)}, base, {})) == 1
    bad = {p + "lin.lora_A.weight": (2, 7), p + "lin.lora_B.weight": (6, 3), p + "x.lora_A.weight": (2, 8),
           p + "lin.lora_magnitude_vector": (5,), p + "norm.weight": (7,), p + "norm.lora_A.weight": (2, 6)}
    problems = check_adapter(bad, base, {})
    by_key = {pr.key: pr for pr in problems}
    assert set(by_key) == set(bad)
    assert by_key[p + "x.lora_A.weight"].base == "x.weight"
    assert "input features" in by_key[p + "lin.lora_A.weight"].what
    assert "rank 3" in by_key[p + "lin.lora_B.weight"].what
    assert "needs a matrix" in by_key[p + "norm.lora_A.weight"].what
    assert all("\n" not in pr.line() for pr in problems)


# --- property: random LoRA adapters round-trip bit for bit ----------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(r=st.integers(1, 5), alpha=st.integers(1, 16), rslora=st.booleans(), seed=st.integers(0, 2**16),
       targets=st.sets(st.sampled_from(["emb", "lin", "lin2", "head"]), min_size=1),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_random_adapters_round_trip(r: int, alpha: int, rslora: bool, seed: int, targets: set[str],
                                    dtype: torch.dtype) -> None:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = Path(tmp)
        model = make_adapter(d / "lora", r=r, alpha=alpha, seed=seed, target_modules=sorted(targets),
                             use_rslora=rslora)
        if dtype != torch.float32:  # adapters saved in half precision keep it
            sd = safetensors.torch.load_file(d / "lora" / "adapter_model.safetensors")
            safetensors.torch.save_file({k: v.to(dtype) for k, v in sd.items()},
                                        d / "lora" / "adapter_model.safetensors", metadata={"format": "pt"})
        del model
        anemoi_ckpt.convert(d / "lora", d / "lora.anc", base=save_base(d / "base.anc"), durable=False)
        export_peft(d / "lora.anc", d / "out")
        assert_same_folder(d / "lora", d / "out")
        assert (d / "lora" / "adapter_model.safetensors").read_bytes() == \
            (d / "out" / "adapter_model.safetensors").read_bytes()


def test_export_and_attach_pick_and_refuse(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base.anc")
    make_adapter(tmp_path / "lora", target_modules=["lin"])
    anemoi_ckpt.convert(tmp_path / "lora", tmp_path / "lora.anc", base=base)
    one = attach(base, tmp_path / "lora.anc", tmp_path / "one.anc", name="alps")
    # an adapter attached to one model file attaches to another (picked by name)
    again = attach(base, one, tmp_path / "again.anc", name="alps")
    export_peft(again, tmp_path / "again")
    assert_same_folder(tmp_path / "lora", tmp_path / "again")
    with pytest.raises(UsageError, match="no adapter 'nope'"):
        export_peft(one, tmp_path / "x", name="nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="not a folder"):
        export_peft(one, tmp_path / "file")
    # a freeze delta is listed but has no PEFT form
    with anemoi_ckpt.open(base) as b:
        anemoi_ckpt.save(tmp_path / "delta.anc", {"lin.bias": torch.zeros(6)}, kind="delta",
                         metadata={"adapter": {"name": "d", "base_content_id": b.content_id,
                                               "base_uuid": b.uuid}})
    (row,) = list_adapters(tmp_path / "delta.anc")
    assert (row["name"], row["kind"], row["tensors"], row["bytes"], row["peft_type"]) == ("d", "delta", 1, 24, None)
    with pytest.raises(UsageError, match="freeze delta"):
        export_peft(tmp_path / "delta.anc", tmp_path / "d")
    assert not (tmp_path / "x").exists() and not (tmp_path / "d").exists()
