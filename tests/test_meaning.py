"""Conversion keeps meaning, not only bytes (issue 16, items 7 and 10).

Item 7: a torch file's tensors can carry flags that change their values (the negative bit, the
conjugate bit, a ``byteorder`` record of ``big``). The ``.anc`` must hold the values the real
``torch.load(weights_only=True)`` gives for the very same file, or the conversion is refused in
one line; the comparison is of values, never of stored bytes.

Item 10: what ``convert`` writes as a JSON document is what the reader reads back (no duplicate
keys, no NaN, nothing the parser refuses), keys that collide once written as text are kept apart
losslessly or refused, and ``verify`` decodes every document.
"""

from __future__ import annotations

import collections
import json
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anemoi_ckpt
from anemoi_ckpt.container import hashing
from anemoi_ckpt.container import sections as S
from anemoi_ckpt.container.schema import Section
from anemoi_ckpt.convert import convert
from anemoi_ckpt.errors import AncError, FormatError
from anemoi_ckpt.verify import verify
from anemoi_ckpt.writer import Writer, _json_bytes
from tests.conftest import one_error_line, run_cli

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

NEG_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.complex64]  # .anc stores no complex128


# --- building inputs ---------------------------------------------------------------------------

def _values(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point or dtype.is_complex:
        return (torch.randn(shape, dtype=torch.complex128 if dtype.is_complex else torch.float64,
                            generator=g) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000) + 1, shape, generator=g).to(dtype)


def _flagged(t: torch.Tensor, neg: bool, conj: bool, transpose: bool) -> torch.Tensor:
    if transpose and t.dim() >= 2:
        t = t.transpose(0, 1)  # a non-contiguous view: the flags apply to views too
    if neg:
        t = torch._neg_view(t)
    if conj:
        t = t.conj()
    return t


def _rewrite(src: Path, dst: Path, byteorder: bytes | None, swap: dict[str, int] | None = None) -> None:
    """``src`` with its ``byteorder`` record replaced (None: removed) and the storages named in
    ``swap`` (key -> swap unit) byte-reversed unit by unit: the same values in the other order."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            root, _, rel = info.filename.partition("/")
            data = zin.read(info)
            if rel == "byteorder":
                if byteorder is None:
                    continue
                data = byteorder
            elif swap and rel.startswith("data/") and rel[5:] in swap:
                unit = swap[rel[5:]]
                data = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(-1, unit).flip(-1) \
                    .contiguous().numpy().tobytes() if data else data
            zout.writestr(zipfile.ZipInfo(info.filename), data)


def _storage_units(path: Path) -> dict[str, int]:
    """Each storage key of a torch file -> the unit torch's byteswap reverses (half a complex)."""
    from anemoi_ckpt.legacy.standins import TensorRef, walk
    from anemoi_ckpt.legacy.torchzip import TorchZipCheckpoint

    with TorchZipCheckpoint(path) as ck:
        refs = [o for o in walk(ck.obj) if isinstance(o, TensorRef)]
    out = {}
    for r in refs:
        dt = getattr(torch, r.storage.dtype_name)
        size = torch.empty((), dtype=dt).element_size()
        out[r.storage.key] = size // 2 if dt.is_complex else size
    return out


def _torch_values(path: Path) -> dict[str, torch.Tensor]:
    """What the real torch.load gives, as plain values (flags resolved)."""
    loaded = torch.load(path, weights_only=True, map_location="cpu")
    return {k: v.resolve_conj().resolve_neg() for k, v in loaded.items()}


def _anc_values(path: Path) -> dict[str, torch.Tensor]:
    with anemoi_ckpt.open(path) as ck:
        return {k: v.clone() for k, v in ck.tensors("weights").items()}


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))


# --- item 7: flags that change values ----------------------------------------------------------

def test_conj_imag_converts_to_torch_load_values(tmp_path: Path) -> None:
    """The issue's example: ``z.conj().imag`` is saved with its negative bit."""
    z = torch.tensor([1 + 2j, -3 + 0.5j, 4 - 1j], dtype=torch.complex64)
    src, dst = tmp_path / "neg.pt", tmp_path / "neg.anc"
    torch.save({"imag": z.conj().imag}, src)
    torch.save({"conj": z.conj()}, tmp_path / "conj.pt")
    for f in (src, tmp_path / "conj.pt"):
        out = f.with_suffix(".anc")
        report = convert(f, out, durable=False)
        assert report.verified
        want, got = _torch_values(f), _anc_values(out)
        assert want.keys() == got.keys()
        for k in want:
            assert _same_values(got[k], want[k]), (k, got[k], want[k])
    assert torch.equal(_anc_values(dst)["imag"], torch.tensor([-2.0, -0.5, 1.0]))
    assert verify(anemoi_ckpt.open(dst)).ok


@SETTINGS
@given(dtype=st.sampled_from(NEG_DTYPES), shape=st.sampled_from([(), (0,), (5,), (3, 4), (2, 3, 2)]),
       neg=st.booleans(), conj=st.booleans(), transpose=st.booleans(),
       byteorder=st.sampled_from([b"little", b"big", None]), seed=st.integers(0, 2**16))
def test_flags_and_byte_order_give_torch_load_values(tmp_path_factory: pytest.TempPathFactory,
                                                     dtype: torch.dtype, shape: tuple[int, ...], neg: bool,
                                                     conj: bool, transpose: bool, byteorder: bytes | None,
                                                     seed: int) -> None:
    conj = conj and dtype.is_complex
    tmp = tmp_path_factory.mktemp("flags")
    base = _values(dtype, shape, seed)
    plain = tmp / "plain.pt"
    # two tensors: one flagged, one plain, each with its own storage
    torch.save({"flagged": _flagged(base, neg, conj, transpose), "plain": base.clone()}, plain)
    src = tmp / "src.pt"
    swap = _storage_units(plain) if byteorder == b"big" else None
    _rewrite(plain, src, byteorder, swap)
    dst = tmp / "out.anc"
    report = convert(src, dst, durable=False)
    assert report.verified
    want, got = _torch_values(src), _anc_values(dst)
    assert want.keys() == got.keys()
    for k in want:
        assert _same_values(got[k], want[k]), (k, dtype, neg, conj, byteorder, got[k], want[k])
    # and these are the values the tensors were saved with
    assert _same_values(want["plain"], base)
    assert _same_values(want["flagged"], _flagged(base, neg, conj, transpose).resolve_conj().resolve_neg())
    assert verify(anemoi_ckpt.open(dst)).ok


def _save_with_metadata(path: Path, t: torch.Tensor, metadata: object,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch.save file whose tensor records ``metadata`` (what torch writes for the flags)."""
    with monkeypatch.context() as m:
        m.setattr(torch._utils, "get_tensor_metadata", lambda tensor: metadata)
        torch.save({"t": t}, path)


@pytest.mark.parametrize("dtype, metadata, fragment", [
    (torch.bool, {"neg": True}, "torch cannot give its values"),
    (torch.float32, {"conj": True}, "torch cannot give its values"),
    (torch.float32, {"neg": False}, "is not understood"),
    (torch.float32, {"neg": 1}, "is not understood"),
    (torch.float32, {"shift": True}, "is not understood"),
    (torch.float32, ["neg"], "is not understood"),
])
def test_flags_without_a_meaning_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     dtype: torch.dtype, metadata: object,
                                                     fragment: str) -> None:
    src, dst = tmp_path / "odd.pt", tmp_path / "odd.anc"
    _save_with_metadata(src, torch.ones(4).to(dtype), metadata, monkeypatch)
    line = one_error_line(run_cli("convert", str(src), str(dst)), str(src), fragment)
    assert len(line) < 400
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["odd.pt"]
    # scan still reports the file (the flags are data, never a reason to fail reading the pickle)
    assert run_cli("scan", str(src)).returncode == 0


@pytest.mark.parametrize("record", [b"middle", b"Big", b"little\n", b"", b"x" * 100])
def test_unknown_byteorder_refused_in_one_line(tmp_path: Path, record: bytes) -> None:
    plain, src, dst = tmp_path / "plain.pt", tmp_path / "src.pt", tmp_path / "src.anc"
    torch.save({"t": torch.arange(6, dtype=torch.float32)}, plain)
    _rewrite(plain, src, record)
    with pytest.raises(Exception):  # torch refuses it too
        torch.load(src, weights_only=True)
    one_error_line(run_cli("convert", str(src), str(dst)), str(src), "byteorder")
    assert not dst.exists()
    assert run_cli("scan", str(src)).returncode == 0  # the pickle is still reported


# --- item 10: documents the reader reads back ----------------------------------------------------

def _lightning(path: Path, hparams: object, **extra: object) -> None:
    torch.save({"pytorch-lightning_version": "2.4.0", "epoch": 0, "global_step": 0,
                "state_dict": {"model.w": torch.arange(4, dtype=torch.float32)},
                "hyper_parameters": hparams, **extra}, path)


def _check_documents(dst: Path) -> dict[str, object]:
    """Every document decodes under the reader's strict rules, and verify agrees."""
    with anemoi_ckpt.open(dst) as ck:
        docs = {name: ck.document(name) for name in ck.documents()}
        assert verify(ck).ok
    return docs


def _huge() -> int:
    return 10 ** 5000  # longer than Python's JSON reader takes as a number


_KEYS = st.one_of(st.integers(-3, 3), st.sampled_from(["0", "1", "-1", "true", "null", "1.0", "a"]),
                  st.booleans(), st.none(), st.sampled_from([1.0, 0.5]),
                  st.tuples(st.sampled_from(["a", "1"]), st.integers(0, 1)))
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True),
                    st.text(max_size=5), st.complex_numbers(allow_nan=True, allow_infinity=True),
                    st.builds(_huge), st.just("\ud800"))
_TREES = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4),
    st.dictionaries(_KEYS, inner, max_size=4).map(collections.OrderedDict)), max_leaves=12)


@SETTINGS
@given(hparams=st.dictionaries(_KEYS, _TREES, max_size=5))
def test_documents_always_read_back(tmp_path_factory: pytest.TempPathFactory, hparams: dict) -> None:
    tmp = tmp_path_factory.mktemp("docs")
    src, dst = tmp / "train.ckpt", tmp / "train.anc"
    _lightning(src, hparams)
    try:
        convert(src, dst, durable=False)
    except AncError as e:
        # the only refusal: text JSON cannot hold (a lone surrogate), named with the source
        assert e.file == str(src) and "surrogate" in e.line() and "\n" not in e.line()
        assert not dst.exists()
        return
    _check_documents(dst)


def test_keys_that_collide_as_text_are_kept_apart(tmp_path: Path) -> None:
    src, dst = tmp_path / "train.ckpt", tmp_path / "train.anc"
    _lightning(src, {"outer": {1: "a", "1": "b", None: "c", "None": "d"}, "n": 10 ** 5000,
                     "z": complex(float("nan"), 1.0)})
    report = convert(src, dst, durable=False)
    assert report.verified
    hp = _check_documents(dst)["hyper-parameters"]
    assert hp["outer"] == {"__items__": [[1, "a"], ["1", "b"], [None, "c"], ["None", "d"]]}
    assert hp["n"] == {"__int__": hex(10 ** 5000)}
    assert hp["z"] == {"__complex__": [{"__float__": "nan"}, 1.0]}


def test_config_object_keys_that_collide_as_text_are_kept_apart(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An OmegaConf DictConfig (written by its handler, key by key) with keys 1 and "1"."""
    mod = types.ModuleType("omegaconf.dictconfig")

    class DictConfig:
        def __init__(self, content: dict) -> None:
            self._content = content

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    mod.DictConfig = DictConfig  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", mod)
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    src, dst = tmp_path / "train.ckpt", tmp_path / "train.anc"
    _lightning(src, {"config": DictConfig({1: "a", "1": "b"}), "plain": DictConfig({"x": 1})})
    convert(src, dst, durable=False)
    hp = _check_documents(dst)["hyper-parameters"]
    assert hp["config"] == {"__items__": [[1, "a"], ["1", "b"]]}
    assert hp["plain"] == {"x": 1}


def test_optimizer_state_keys_that_collide_refused(tmp_path: Path) -> None:
    src, dst = tmp_path / "train.ckpt", tmp_path / "train.anc"
    osd = {"state": {0: {"step": 1}, "0": {"step": 2}}, "param_groups": [{"params": [0], "lr": 0.1}]}
    _lightning(src, {}, optimizer_states=[osd])
    one_error_line(run_cli("convert", "--optimizer-positional", str(src), str(dst)),
                   str(src), "are both written as '0'")
    assert not dst.exists()


def test_writer_never_writes_a_document_the_reader_refuses(tmp_path: Path) -> None:
    dst = tmp_path / "w.anc"
    deep: object = 1
    for _ in range(600):
        deep = [deep]
    for bad in ({1: "a", "1": "b"}, {"x": float("nan")}, {"x": "\udc80"}, {"x": 10 ** 5000}, deep):
        with pytest.raises(FormatError) as info:
            with Writer(dst, durable=False) as w:
                w.add("w", torch.zeros(2))
                w.add_document("doc", bad)
        assert str(dst) in info.value.line() and "document 'doc'" in info.value.line()
        assert not dst.exists()


def test_verify_decodes_documents(tmp_path: Path) -> None:
    """A file whose document holds a duplicate key under a matching digest (as an older writer,
    or a hand-made file, could write it) is not intact, and reading it is refused alike."""
    dst = tmp_path / "dup.anc"
    with Writer(dst, durable=False) as w:
        w.add("w", torch.zeros(2))
        w._close_section()
        rel = S.document_path("hyper-parameters")
        data = _json_bytes({1: "a", "1": "b"})
        assert data == b'{"1":"a","1":"b"}'
        w._zw.write_member(f"{w._root}/{rel}", data)
        w._sections.append(Section(path=rel, role="document", name="hyper-parameters", required=False,
                                   size=len(data), digest=hashing.tagged(hashing.sha256_hex(data)),
                                   media_type=S.JSON))
    with anemoi_ckpt.open(dst) as ck:
        report = verify(ck)
        assert not report.ok
        bad = [s for s in report.sections if not s.ok]
        assert [s.path for s in bad] == [rel] and "duplicate JSON key" in (bad[0].problem or "")
        with pytest.raises(FormatError, match="duplicate JSON key"):
            ck.document("hyper-parameters")
    out = run_cli("verify", str(dst))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert json.loads(data) == {"1": "b"}  # what a lenient parser would silently take


def test_the_writer_never_writes_anemoi_metadata_the_reader_refuses(tmp_path) -> None:
    import anemoi_ckpt
    from anemoi_ckpt.errors import FormatError

    deep: object = 1
    for _ in range(600):
        deep = [deep]
    path = tmp_path / "deep.anc"
    with pytest.raises(FormatError) as e:
        anemoi_ckpt.save(path, {"w": torch.zeros(2)}, anemoi_metadata={"x": deep})
    assert "nested deeper than 512" in str(e.value) and "\n" not in str(e.value)
    assert not path.exists()
