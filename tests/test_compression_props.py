"""Hypothesis: compressed files round-trip any tensors, and damage anywhere in a compressed
member gives one clean error or a correct read, never a crash, a hang or a huge allocation."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import anemoi_ckpt
from anemoi_ckpt import AncError
from anemoi_ckpt.container.codec import Compression
from anemoi_ckpt.container.dtypes import CODE_TO_TORCH
from tests.conftest import section_span
from tests.test_damaged import Archive

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CODES = sorted(CODE_TO_TORCH)
SHAPES = st.lists(st.integers(0, 40), min_size=0, max_size=3)  # 0-d, empty and up to 64,000 items


def make(code: str, shape: list[int], seed: int) -> torch.Tensor:
    """A tensor of ``shape`` with random bytes (any bit pattern: NaNs, subnormals, -0.0), or
    random-normal values for floats half of the time (what compresses)."""
    dtype = CODE_TO_TORCH[code]
    n = int(np.prod(shape)) if shape else 1
    item = torch.empty((), dtype=dtype).element_size()
    rng = np.random.default_rng(seed)
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    if dtype.is_floating_point and seed % 2 and item > 1:
        return (torch.from_numpy(rng.standard_normal(n)) * 0.02).to(dtype).reshape(shape)
    raw = torch.from_numpy(rng.integers(0, 256, n * item, dtype=np.uint8))
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


tensors_st = st.dictionaries(st.text("abc.", min_size=1, max_size=6),
                             st.tuples(st.sampled_from(CODES), SHAPES, st.integers(0, 2**31)),
                             min_size=1, max_size=5)


@SETTINGS
@given(spec=tensors_st, level=st.sampled_from([1, 3, 9, 22]), chunk=st.sampled_from([4096, 8192, 1 << 20]),
       alias=st.booleans())
def test_round_trip(tmp_path: Path, spec: dict[str, Any], level: int, chunk: int, alias: bool) -> None:
    sd = {name: make(code, shape, seed) for name, (code, shape, seed) in spec.items()}
    if alias:
        sd["alias.of.first"] = sd[next(iter(sd))]
    plain = anemoi_ckpt.save(tmp_path / "plain.anc", sd, durable=False)
    path = tmp_path / "z.anc"
    with anemoi_ckpt.Writer(path, compress=Compression(level, chunk), durable=False) as w:
        w.add_section("weights", sd)
    with anemoi_ckpt.open(path) as ck, anemoi_ckpt.open(plain) as pk:
        assert ck.content_id == pk.content_id
        got = ck.state_dict()
        assert set(got) == set(sd)
        for k, t in sd.items():
            assert got[k].dtype == t.dtype and got[k].shape == t.shape and raw(got[k]) == raw(t), k
        if alias:  # the same tie decisions compressed or not (an empty tensor is stored twice:
            # with no bytes there is no storage to tell a tie by); a tie is one object
            assert ck.tensors().aliases == pk.tensors().aliases
            if "alias.of.first" in ck.tensors().aliases:
                assert got["alias.of.first"] is got[next(iter(sd))]
        assert ck.verify().ok


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = {"w": make("BF16", [40, 300], 1), "b": make("F32", [3000], 3), "i": make("I32", [50], 4),
          "e": make("F16", [0, 2], 5), "s": make("F64", [], 7)}
    path = tmp_path_factory.mktemp("props") / "packed.anc"
    # a header without spare room: most of the member is frames
    with anemoi_ckpt.Writer(path, compress=Compression(3, 4096), durable=False, header_reserve=64) as w:
        w.add_section("weights", sd)
    return path, sd


def outcome(path: Path, sd: dict[str, torch.Tensor]) -> str:
    """'error' (one clean AncError, a single line) or 'read' (every tensor equal to the
    original and verify agreeing with what was read)."""
    try:
        with anemoi_ckpt.open(path) as ck:
            got = ck.state_dict()
            report = ck.verify()
    except AncError as e:
        assert "\n" not in str(e) and len(str(e)) < 600
        return "error"
    assert {k: raw(v) for k, v in got.items()} == {k: raw(v) for k, v in sd.items()}
    assert report.ok
    return "read"


@SETTINGS
@given(data=st.data())
def test_damage_anywhere_in_the_member(packed, tmp_path: Path, data: st.DataObject) -> None:
    path, sd = packed
    offset, size = section_span(path, "weights.safetensors-zstd")
    blob = bytearray(path.read_bytes())
    where = data.draw(st.integers(0, size - 1), label="byte in the member")
    blob[offset + where] ^= data.draw(st.integers(1, 255), label="xor")
    bad = tmp_path / "bad.anc"
    bad.write_bytes(bytes(blob))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome(bad, sd)
    # no allocation driven by a damaged size: peak memory grows by far less than 100 MB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000


@SETTINGS
@given(data=st.data())
def test_lying_frame_sizes(packed, tmp_path: Path, data: st.DataObject) -> None:
    """Any frame index (sizes moved between frames, same total): refused or read correctly."""
    path, sd = packed
    arc = Archive(path)
    m = arc.manifest
    frames = arc.section(m, "weights.safetensors-zstd")["encoding"]["frames"]
    i = data.draw(st.integers(0, len(frames) - 1))
    j = data.draw(st.integers(0, len(frames) - 1))
    d = data.draw(st.integers(1, 64))
    changed = frames[i] > d and i != j
    if changed:
        frames[i] -= d
        frames[j] += d
    arc.manifest = m
    bad = arc.write(tmp_path / "lie.anc")
    result = outcome(bad, sd)
    assert result == ("error" if changed else "read")  # a frame boundary moved is always refused
