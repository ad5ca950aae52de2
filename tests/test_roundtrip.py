"""Round-trips through real files: every dtype, 0-d and empty tensors, non-contiguous input,
awkward names, aliases; hypothesis generates the tensor sets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import anemoi_ckpt
from anemoi_ckpt.container.dtypes import CODE_TO_TORCH

DTYPES = sorted(CODE_TO_TORCH.values(), key=str)


def raw(t: torch.Tensor) -> bytes:
    """The tensor's bytes; compares NaNs and float8 payloads bit for bit."""
    t = t.contiguous().reshape(-1)
    return bytes(t.view(torch.uint8).numpy()) if t.numel() else b""


def random_tensor(dtype: torch.dtype, shape: list[int], seed: int, contiguous: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Build from random bytes so every bit pattern (NaN, inf, subnormals) is exercised.
    alloc = list(reversed(shape)) if not contiguous and len(shape) >= 2 else shape
    n = math.prod(alloc) * torch.empty((), dtype=dtype).element_size()
    data = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        data = data % 2
    t = data.view(dtype).reshape(alloc)
    if not contiguous and len(shape) >= 2:
        t = t.permute(*reversed(range(len(shape))))  # same logical shape, transposed strides
        assert not t.is_contiguous() or t.numel() <= 1 or 1 in shape
    return t


names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=24).filter(
    lambda s: s != "__metadata__")
tensor_specs = st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), max_size=3),
                         st.integers(0, 2**31), st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.dictionaries(names, tensor_specs, min_size=0, max_size=8),
       alias_picks=st.lists(st.tuples(names, st.integers(0, 100)), max_size=3))
def test_roundtrip_random_sets(tmp_path: Path, specs, alias_picks) -> None:
    tensors = {n: random_tensor(dt, shape, seed, cont) for n, (dt, shape, seed, cont) in specs.items()}
    aliases = {}
    stored = list(tensors)
    for alias, k in alias_picks:
        if stored and alias not in tensors and tensors[stored[k % len(stored)]].numel():
            aliases[alias] = stored[k % len(stored)]
            tensors[alias] = tensors[aliases[alias]]
    path = tmp_path / "rt.anc"
    anemoi_ckpt.save(path, tensors)
    with anemoi_ckpt.open(path) as ck:
        out = ck.state_dict()
        assert set(out) == set(tensors)
        for n, t in tensors.items():
            assert out[n].dtype == t.dtype and tuple(out[n].shape) == tuple(t.shape), n
            assert raw(out[n]) == raw(t), n
        for alias, target in aliases.items():
            assert out[alias] is out[target]
        assert ck.tensors().aliases.keys() == aliases.keys()
        assert ck.verify().ok
        cid = ck.content_id
    # Copies instead of aliases, in another order: same logical weights, same content id.
    copies = {n: tensors[n].clone() for n in reversed(list(tensors))}
    anemoi_ckpt.save(tmp_path / "copies.anc", copies)
    with anemoi_ckpt.open(tmp_path / "copies.anc") as ck2:
        assert ck2.content_id == cid
        assert ck2.uuid != ck.uuid


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (3, 5)])
def test_every_dtype_and_shape(tmp_path: Path, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    t = random_tensor(dtype, list(shape), 7, contiguous=len(shape) < 2)
    anemoi_ckpt.save(tmp_path / "one.anc", {"x": t})
    with anemoi_ckpt.open(tmp_path / "one.anc") as ck:
        y = ck.tensors()["x"]
        assert y.dtype == dtype and tuple(y.shape) == shape and raw(y) == raw(t)


def test_content_id_changes_with_any_byte_name_dtype_or_shape(tmp_path: Path) -> None:
    base = {"a": torch.arange(6, dtype=torch.float32)}
    variants = {
        "value": {"a": torch.arange(6, dtype=torch.float32)},
        "name": {"b": torch.arange(6, dtype=torch.float32)},
        "dtype": {"a": torch.arange(6, dtype=torch.float32).view(torch.int32)},
        "shape": {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
    }
    variants["value"]["a"][0] = 0.5
    ids = {}
    for label, sd in {"base": base, **variants}.items():
        anemoi_ckpt.save(tmp_path / f"{label}.anc", sd)
        with anemoi_ckpt.open(tmp_path / f"{label}.anc") as ck:
            ids[label] = ck.content_id
    assert len(set(ids.values())) == len(ids), ids


def test_metadata_does_not_change_content_id(tmp_path: Path, demo_sd) -> None:
    anemoi_ckpt.save(tmp_path / "a.anc", demo_sd, metadata={"description": "one"})
    anemoi_ckpt.save(tmp_path / "b.anc", demo_sd, metadata={"description": "two", "user": {"k": 1}},
                     anemoi_metadata={"version": "1.0"})
    with anemoi_ckpt.open(tmp_path / "a.anc") as a, anemoi_ckpt.open(tmp_path / "b.anc") as b:
        assert a.content_id == b.content_id
        assert a.metadata.description == "one" and b.metadata.user == {"k": 1}


def test_shared_normalizer_buffers_stored_once(tmp_path: Path, demo_sd) -> None:
    path = tmp_path / "m.anc"
    anemoi_ckpt.save(path, demo_sd)
    with anemoi_ckpt.open(path) as ck:
        aliases = ck.tensors().aliases
        assert aliases == {"post_processors.data.processors.normalizer._norm_mul":
                           "pre_processors.data.processors.normalizer._norm_mul",
                           "post_processors.data.processors.normalizer._norm_add":
                           "pre_processors.data.processors.normalizer._norm_add"}
        sd = ck.state_dict()
        assert sd["post_processors.data.processors.normalizer._norm_add"] is \
            sd["pre_processors.data.processors.normalizer._norm_add"]


def test_loaded_tensors_are_zero_copy_and_private(tmp_path: Path) -> None:
    path = tmp_path / "z.anc"
    anemoi_ckpt.save(path, {"w": torch.ones(1024, 16)})
    before = path.read_bytes()
    with anemoi_ckpt.open(path) as ck:
        a = ck.tensors()["w"]
        b = ck.tensors()["w"]
        assert a.data_ptr() == b.data_ptr()  # one view over the map, not a copy per access
        assert a.data_ptr() % 64 == 0        # payload aligned for SIMD and mmap users
        a.mul_(3)                            # copy-on-write: the file never changes
    assert path.read_bytes() == before


def test_partial_views_are_stored_as_copies(tmp_path: Path) -> None:
    base = torch.arange(12.0)
    sd = {"full": base, "head": base[:4], "strided": base[::3]}
    anemoi_ckpt.save(tmp_path / "v.anc", sd)
    with anemoi_ckpt.open(tmp_path / "v.anc") as ck:
        assert ck.tensors().aliases == {}
        out = ck.state_dict()
        for k, v in sd.items():
            assert torch.equal(out[k], v)


def test_extra_sections_and_section_api(tmp_path: Path, demo_sd) -> None:
    graph = {"edge_index": torch.randint(0, 10, (2, 30)), "x": torch.rand(10, 2, dtype=torch.float64)}
    anemoi_ckpt.save(tmp_path / "g.anc", demo_sd, sections={"graph": graph, "extra_stuff": {"k": torch.ones(2)}})
    with anemoi_ckpt.open(tmp_path / "g.anc") as ck:
        assert ck.tensor_sections() == ["weights", "graph", "extra_stuff"]
        assert torch.equal(ck.tensors("graph")["edge_index"], graph["edge_index"])
        assert ck.section("extra_stuff.safetensors").role == "tensors"
        with pytest.raises(anemoi_ckpt.UsageError, match="no tensor section 'nope'"):
            ck.tensors("nope")


def test_empty_state_dict(tmp_path: Path) -> None:
    anemoi_ckpt.save(tmp_path / "e.anc", {})
    with anemoi_ckpt.open(tmp_path / "e.anc") as ck:
        assert ck.state_dict() == {}
        assert ck.verify().ok


def test_rejects_what_cannot_be_stored(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="sparse|layout"):
        anemoi_ckpt.save(tmp_path / "s.anc", {"s": torch.eye(3).to_sparse()})
    with pytest.raises(ValueError, match="invalid tensor name"):
        anemoi_ckpt.save(tmp_path / "m.anc", {"__metadata__": torch.ones(1)})
    assert not (tmp_path / "s.anc").exists() and not (tmp_path / "m.anc").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either
