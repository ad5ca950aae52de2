"""`convert` from Hugging Face layouts: sharded safetensors and PEFT adapter folders.

Every input is a real file written by the real library (safetensors' save_file, peft's
save_pretrained, torch.save); every damaged input goes through the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import anemoi_ckpt
from anemoi_ckpt.convert import convert
from tests.conftest import run_cli


def raw_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaNs included: compares the raw bits, not the values)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    fa, fb = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    if fa.numel() == 0:
        return True
    return torch.equal(fa.view(torch.uint8), fb.view(torch.uint8))


def write_sharded(folder: Path, shards: list[dict[str, torch.Tensor]], *,
                  index_name: str = "model.safetensors.index.json", total_size: int | None = None) -> Path:
    """Shards and index exactly as transformers' save_pretrained lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = index_name.removesuffix(".safetensors.index.json")
    weight_map, size = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        safetensors.torch.save_file(shard, folder / fname, metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            size += t.numel() * t.element_size()
    index = folder / index_name
    index.write_text(json.dumps({"metadata": {"total_size": size if total_size is None else total_size},
                                 "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return index


def shard_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """What safetensors itself reads from every shard the index names."""
    index = next(folder.glob("*.safetensors.index.json"))
    out: dict[str, torch.Tensor] = {}
    for fname in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        out.update(safetensors.torch.load_file(folder / fname))
    return out


SAMPLE = [
    {"embed.weight": torch.randn(7, 4), "embed.scale": torch.randn(4).to(torch.bfloat16)},
    {"layer.0.weight": torch.randn(4, 4).half(), "layer.0.steps": torch.arange(5),
     "layer.0.mask": torch.tensor([True, False, True])},
    {"head.weight": torch.randn(2, 4, dtype=torch.float64), "head.empty": torch.empty(0, 3)},
]


# --- sharded safetensors -----------------------------------------------------------------------
@pytest.mark.parametrize("given_as", ["folder", "index"])
def test_sharded_round_trip(tmp_path: Path, given_as: str) -> None:
    index = write_sharded(tmp_path / "model", SAMPLE)
    src = tmp_path / "model" if given_as == "folder" else index
    report = convert(src, tmp_path / "out.anc")
    expected = shard_tensors(tmp_path / "model")
    assert report.format == "safetensors-sharded" and report.kind == "inference"
    assert report.verified == len(expected) == 7
    assert report.details["metadata"] == {"total_size": sum(t.numel() * t.element_size()
                                                             for t in expected.values())}
    assert report.details["shards"] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    with anemoi_ckpt.open(tmp_path / "out.anc") as ck:
        got = ck.tensors()
        assert ck.kind == "inference" and set(got) == set(expected)
        assert all(raw_equal(got[k], v) for k, v in expected.items())
        assert ck.lineage.records[0].parameters["source_format"] == "safetensors-sharded"
        assert ck.verify().ok


def test_sharded_same_content_id_as_single_file(tmp_path: Path) -> None:
    # The same weights, sharded or in one file, are the same logical checkpoint.
    write_sharded(tmp_path / "sharded", SAMPLE)
    safetensors.torch.save_file({k: v for s in SAMPLE for k, v in s.items()}, tmp_path / "one.safetensors")
    a = convert(tmp_path / "sharded", tmp_path / "a.anc")
    b = convert(tmp_path / "one.safetensors", tmp_path / "b.anc")
    assert a.content_id == b.content_id


def test_sharded_other_index_name_and_dry_run(tmp_path: Path) -> None:
    # diffusers names its index after the model file; any *.safetensors.index.json is accepted.
    write_sharded(tmp_path / "unet", SAMPLE[:2], index_name="diffusion_pytorch_model.safetensors.index.json")
    out = run_cli("convert", str(tmp_path / "unet"), str(tmp_path / "unet.anc"), "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["format"] == "safetensors-sharded" and report["tensors"] == {"weights": 5}
    assert report["details"]["index"] == "diffusion_pytorch_model.safetensors.index.json"
    assert not (tmp_path / "unet.anc").exists()


tensor_sets = st.dictionaries(
    st.from_regex(r"[a-z]{1,6}(\.[a-z0-9]{1,4}){0,2}", fullmatch=True),
    st.tuples(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8,
                               torch.uint8, torch.bool, torch.float64]),
              st.lists(st.integers(0, 4), max_size=3)),
    min_size=1, max_size=10)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=tensor_sets, n_shards=st.integers(1, 4), data=st.data())
def test_sharded_round_trip_property(specs: dict, n_shards: int, data: st.DataObject) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    tensors = {}
    for name, (dtype, shape) in specs.items():
        # random bytes reinterpreted: every bit pattern (NaNs, subnormals) must survive as is
        raw = torch.randint(0, 256, (int(torch.Size(shape).numel()) * torch.empty(0, dtype=dtype).element_size(),),
                            dtype=torch.uint8, generator=gen)
        t = raw.view(dtype).reshape(shape)
        tensors[name] = (t != 0) if dtype == torch.bool else t  # bool: only 0/1 bytes are valid
    owner = {name: data.draw(st.integers(0, n_shards - 1)) for name in tensors}
    shards = [s for s in ({n: t for n, t in tensors.items() if owner[n] == i} for i in range(n_shards)) if s]
    with tempfile.TemporaryDirectory() as tmp:
        write_sharded(Path(tmp) / "m", shards)
        report = convert(Path(tmp) / "m", Path(tmp) / "m.anc", durable=False, progress=False)
        assert report.verified == len(tensors)
        with anemoi_ckpt.open(Path(tmp) / "m.anc") as ck:
            got = ck.tensors()
            assert set(got) == set(tensors)
            assert all(raw_equal(got[n], t) for n, t in tensors.items())


# --- PEFT adapters -----------------------------------------------------------------------------
class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.lin(x)))


ADAPTERS = {"lora": {}, "modules_to_save": {"modules_to_save": ["head"]}, "dora": {"use_dora": True}}


def make_adapter(folder: Path, variant: str, safe: bool) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A trained-looking adapter saved by peft, the PEFT model, and its base model's weights."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = Small()
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["lin"],
                                                      **ADAPTERS[variant]))
    with torch.no_grad():  # lora_B starts at zero: make the adapter change the output
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=safe)
    return model, base_weights


@pytest.mark.parametrize("variant", list(ADAPTERS))
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_peft_adapter_round_trip(tmp_path: Path, variant: str, safe: bool) -> None:
    peft = pytest.importorskip("peft")
    model, base_weights = make_adapter(tmp_path / "adapter", variant, safe)
    weights = tmp_path / "adapter" / ("adapter_model.safetensors" if safe else "adapter_model.bin")
    assert weights.exists() and not (tmp_path / "adapter" / ("adapter_model.bin" if safe else
                                                             "adapter_model.safetensors")).exists()
    # the reference: what the library that wrote the file reads back (a trusted file here)
    expected = (safetensors.torch.load_file(weights) if safe
                else torch.load(weights, weights_only=True, map_location="cpu"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())

    report = convert(tmp_path / "adapter", tmp_path / "adapter.anc")
    assert report.format == "peft" and report.kind == "adapter"
    assert report.verified == len(expected) and report.details["peft_config"] == config
    with anemoi_ckpt.open(tmp_path / "adapter.anc") as ck:
        got = ck.tensors()
        assert ck.kind == "adapter" and set(got) == set(expected)
        assert all(raw_equal(got[k], v) for k, v in expected.items())
        assert ck.metadata.model_extra["peft_config"] == config  # verbatim, in metadata.json
        assert ck.verify().ok
        state = {k: v.clone() for k, v in got.items()}
    if variant == "lora":
        assert all(".lora_A." in k or ".lora_B." in k for k in expected)
    elif variant == "modules_to_save":
        assert {"base_model.model.head.weight", "base_model.model.head.bias"} <= set(expected)
    else:
        assert "base_model.model.lin.lora_magnitude_vector" in expected

    # The stored config and tensors are enough to rebuild the adapter on its base: same outputs.
    base = Small()
    base.load_state_dict(base_weights)
    rebuilt = peft.get_peft_model(base, peft.PeftConfig.from_peft_type(**config))
    result = peft.set_peft_model_state_dict(rebuilt, state)
    assert not result.unexpected_keys
    x = torch.randn(5, 8)
    model.eval(), rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))


# --- plain torch state dicts by other names ----------------------------------------------------
@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pth"])
def test_torch_state_dict_under_bin_and_pth_names(tmp_path: Path, name: str) -> None:
    sd = {"w": torch.randn(3, 2), "b": torch.arange(3).to(torch.int32)}
    torch.save(sd, tmp_path / name)
    report = convert(tmp_path / name, tmp_path / "out.anc")
    assert report.format == "torch-state-dict" and report.verified == 2
    expected = torch.load(tmp_path / name, weights_only=True)
    with anemoi_ckpt.open(tmp_path / "out.anc") as ck:
        assert all(raw_equal(ck.tensors()[k], v) for k, v in expected.items())


# --- damaged inputs through the CLI ------------------------------------------------------------
def _sharded(tmp_path: Path) -> Path:
    write_sharded(tmp_path / "m", [SAMPLE[0], SAMPLE[1]])
    return tmp_path / "m"


def _edit_index(folder: Path, edit: Callable[[dict], None]) -> Path:
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    edit(doc)
    index.write_text(json.dumps(doc))
    return index


def missing_shard(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = _sharded(tmp_path)
    (folder / "model-00002-of-00002.safetensors").unlink()
    return folder, folder / "model.safetensors.index.json", "shard 'model-00002-of-00002.safetensors' is missing"


def tensor_not_in_shard(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = _sharded(tmp_path)
    index = _edit_index(folder, lambda d: d["weight_map"].update(ghost="model-00001-of-00002.safetensors"))
    return index, folder / "model-00001-of-00002.safetensors", \
        "tensor 'ghost' is listed for this shard in model.safetensors.index.json but the shard does not hold it"


def unlisted_tensor(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = _sharded(tmp_path)
    _edit_index(folder, lambda d: d["weight_map"].pop("layer.0.mask"))
    return folder, folder / "model-00002-of-00002.safetensors", \
        "tensor 'layer.0.mask' is in this shard but model.safetensors.index.json does not list it here"


def total_size_mismatch(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = _sharded(tmp_path)
    index = _edit_index(folder, lambda d: d["metadata"].update(total_size=d["metadata"]["total_size"] + 4))
    return folder, index, "metadata total_size is"


def broken_index(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = _sharded(tmp_path)
    index = folder / "model.safetensors.index.json"
    index.write_text(index.read_text()[:-10])
    return index, index, "the safetensors index is not valid JSON"


def shard_outside_folder(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = _sharded(tmp_path)
    index = _edit_index(folder, lambda d: d["weight_map"].update({"embed.weight": "../secret.safetensors"}))
    return folder, index, "shard '../secret.safetensors' (for 'embed.weight') is outside the index's folder"


def _adapter_files(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    safetensors.torch.save_file({"base_model.model.lin.lora_A.weight": torch.randn(2, 8)},
                                folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    return folder


def broken_adapter_config(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = _adapter_files(tmp_path)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
    return folder, folder / "adapter_config.json", "the PEFT adapter config is not valid JSON"


def adapter_config_without_type(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = _adapter_files(tmp_path)
    (folder / "adapter_config.json").write_text('{"r": 2}')
    return folder, folder / "adapter_config.json", "the PEFT adapter config has no peft_type"


def adapter_without_weights(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = _adapter_files(tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    return folder, folder, "a PEFT adapter folder without weights"


def plain_folder(tmp_path: Path) -> tuple[Path, Path, str]:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    return tmp_path / "stuff", tmp_path / "stuff", "a folder that is neither sharded safetensors nor a PEFT adapter"


def forced_sharded_without_index(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = _adapter_files(tmp_path)
    return folder, folder, "no *.safetensors.index.json in this folder"


def legacy_torch(tmp_path: Path) -> tuple[Path, Path, str]:
    torch.save({"w": torch.ones(2)}, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    return tmp_path / "old.bin", tmp_path / "old.bin", \
        "legacy (pre-1.6, non-zip) torch serialization is unsupported"


@pytest.mark.parametrize("damage", [missing_shard, tensor_not_in_shard, unlisted_tensor, total_size_mismatch,
                                    broken_index, shard_outside_folder, broken_adapter_config,
                                    adapter_config_without_type, adapter_without_weights, plain_folder,
                                    forced_sharded_without_index, legacy_torch], ids=lambda f: f.__name__)
def test_damaged_input_one_line_no_output(tmp_path: Path, damage: Callable) -> None:
    src, named, problem = damage(tmp_path)
    dst = tmp_path / "out.anc"
    forced = ["--from", "safetensors-sharded"] if damage is forced_sharded_without_index else []
    out = run_cli("convert", str(src), str(dst), *forced)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"anemoi-ckpt: error: {named}: {problem}"), lines[0]
    # nothing written: neither the target nor a stray temporary file beside it
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if "out.anc" in p.name]
