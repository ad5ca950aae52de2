"""Crafted legacy pickles that used to crash or exhaust ``scan``/``convert`` (issue 16, items 1-6).

Each test BUILDS such a file (a real torch zip on disk, data.pkl written opcode by opcode) and checks
a bounded outcome: a correct result, or one :class:`AncError` line naming the file; no signal, no
``RecursionError``, memory and output bounded by the input, nothing written at the target.
The last tests are a short bounded fuzz of the restricted unpickler.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from anemoi_ckpt.convert import convert
from anemoi_ckpt.convert.plan import OUTPUT_FACTOR, OUTPUT_SLACK
from anemoi_ckpt.errors import AncError
from anemoi_ckpt.legacy.plain import MAX_DEPTH
from anemoi_ckpt.legacy.scan import scan
from anemoi_ckpt.legacy.unpickler import MAX_PICKLE_DEPTH

REPO = Path(__file__).resolve().parent.parent
FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- building pickles by opcode --------------------------------------------------------------------

P2 = pickle.PROTO + b"\x02"


def s(text: str) -> bytes:
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def g(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def i32(n: int) -> bytes:
    return pickle.BININT + struct.pack("<i", n)


def put(k: int) -> bytes:
    return pickle.LONG_BINPUT + struct.pack("<I", k)


def get(k: int) -> bytes:
    return pickle.LONG_BINGET + struct.pack("<I", k)


def tensor(key: str, numel: int, offset: int = 0, size: tuple[int, ...] | None = None,
           stride: tuple[int, ...] | None = None) -> bytes:
    """``_rebuild_tensor_v2`` of a float32 view of storage ``data/<key>``."""
    size = (numel,) if size is None else size
    stride = (1,) * len(size) if stride is None else stride
    pid = pickle.MARK + s("storage") + g("torch", "FloatStorage") + s(key) + s("cpu") + i32(numel) + pickle.TUPLE
    return (g("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + pid + pickle.BINPERSID + i32(offset)
            + pickle.MARK + b"".join(i32(d) for d in size) + pickle.TUPLE
            + pickle.MARK + b"".join(i32(d) for d in stride) + pickle.TUPLE
            + pickle.NEWFALSE + g("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
            + pickle.TUPLE + pickle.REDUCE)


def lightning(hparams: bytes, state_dict: bytes | None = None) -> bytes:
    """A Lightning checkpoint's dict: one weight ``model.w`` (storage ``0``) and ``hparams``."""
    sd = state_dict if state_dict is not None else (pickle.EMPTY_DICT + s("model.w") + tensor("0", 2)
                                                    + pickle.SETITEM)
    return (P2 + pickle.EMPTY_DICT + pickle.MARK + s("pytorch-lightning_version") + s("2.0.0")
            + s("state_dict") + sd + s("hyper_parameters") + hparams + pickle.SETITEMS + pickle.STOP)


def torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in (storages if storages is not None else {"0": b"\0" * 8}).items():
            zf.writestr(f"archive/data/{key}", raw)
        zf.writestr("archive/version", "3\n")
    return path


def fresh(path: Path) -> Path:
    """``path`` with no file there (hypothesis runs many examples in one tmp_path)."""
    path.unlink(missing_ok=True)
    return path


def refused(fn, path: Path, *args, **kwargs) -> str:
    """``fn`` must refuse ``path`` with one AncError line naming it; returns the line."""
    with pytest.raises(AncError) as info:
        fn(path, *args, **kwargs)
    line = info.value.line()
    assert str(path) in line and "\n" not in line, line
    return line


def nested(kind: str, depth: int) -> bytes:
    """An object ``depth`` levels deep, as the top of a pickle body."""
    if kind == "tuple-in-set":  # hashing a nested tuple recursed in C
        return pickle.EMPTY_SET + pickle.MARK + pickle.EMPTY_TUPLE + pickle.TUPLE1 * depth + pickle.ADDITEMS
    if kind == "tuple-as-key":
        return pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + pickle.TUPLE1 * depth + pickle.NONE + pickle.SETITEM
    if kind == "slice":  # freeing nested slices recursed in C
        return (g("builtins", "slice") + put(0) + get(0) * (depth - 1) + pickle.NONE
                + (pickle.TUPLE1 + pickle.REDUCE) * depth)
    raise AssertionError(kind)


def nested_dicts(depth: int) -> bytes:
    """``{"k": {"k": ... {}}}`` ``depth`` levels: EMPTY_DICT, then per level a new dict around it."""
    body = pickle.EMPTY_DICT
    for _ in range(depth):
        body = pickle.EMPTY_DICT + s("k") + body + pickle.SETITEM
    return body


def nested_lists(depth: int) -> bytes:
    return pickle.EMPTY_LIST * (depth + 1) + pickle.APPEND * depth


# --- 1. deep nesting that crashed in C; 6. nesting reported by name -------------------------------

@FAST
@given(kind=st.sampled_from(["tuple-in-set", "tuple-as-key", "slice", "list"]),
       depth=st.integers(MAX_PICKLE_DEPTH + 1, 150_000))
def test_deep_nesting_is_refused_in_one_line(tmp_path: Path, kind: str, depth: int) -> None:
    body = nested(kind, depth) if kind != "list" else nested_lists(depth)
    path = torch_zip(tmp_path / f"{kind}.pt", P2 + body + pickle.STOP)
    line = refused(scan, path)
    assert f"nested deeper than {MAX_PICKLE_DEPTH}" in line
    dst = fresh(tmp_path / "out.anc")
    refused(convert, path, dst)
    assert not dst.exists()


@FAST
@given(depth=st.integers(MAX_DEPTH - 60, MAX_PICKLE_DEPTH - 10), kind=st.sampled_from(["dict", "list"]))
def test_nesting_below_the_pickle_limit_converts_or_is_refused_by_name(tmp_path: Path, depth: int,
                                                                       kind: str) -> None:
    """Nesting around the documented 400 levels: never Python's RecursionError."""
    hp = nested_dicts(depth) if kind == "dict" else nested_lists(depth)
    path = torch_zip(tmp_path / "deep.ckpt", lightning(hp))
    dst = fresh(tmp_path / "out.anc")
    try:
        convert(path, dst, durable=False)
    except AncError as e:
        line = e.line()
        assert str(path) in line and "nested" in line, line
        assert not dst.exists()
    else:
        assert depth <= MAX_DEPTH + 10
    assert scan(path).tensors == 1


def test_the_cli_reports_a_crashing_pickle_in_one_line(tmp_path: Path) -> None:
    """The real CLI in a subprocess: no signal, no traceback, one line naming the file."""
    path = torch_zip(tmp_path / "seg.pt", P2 + nested("tuple-in-set", 200_000) + pickle.STOP)
    for args in (["scan", str(path)], ["convert", str(path), str(tmp_path / "o.anc")]):
        proc = subprocess.run([sys.executable, "-m", "anemoi_ckpt", *args], capture_output=True,
                              text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 1, (proc.returncode, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o.anc").exists()


# --- 2. allocating callables, memo references expanded again -------------------------------------

@FAST
@given(n=st.integers(1 << 20, 1 << 40))
def test_bytearray_of_a_count_is_refused(tmp_path: Path, n: int) -> None:
    body = g("builtins", "bytearray") + pickle.MARK + pickle.LONG1 + bytes([8]) + n.to_bytes(8, "little") \
        + pickle.TUPLE + pickle.REDUCE
    path = torch_zip(tmp_path / "ba.ckpt", lightning(body))
    assert "bytearray" in refused(scan, path)


@FAST
@given(copies=st.integers(2_000, 20_000), width=st.integers(200, 2_000),
       ctor=st.sampled_from(["list", "tuple", "set", "frozenset"]))
def test_repeated_container_copies_are_bounded(tmp_path: Path, copies: int, width: int, ctor: str) -> None:
    """``list(x)`` of one memo-referenced ``x``, many times: the copies are charged to a budget
    proportional to data.pkl's size."""
    x = pickle.EMPTY_LIST + put(0) + pickle.MARK + b"".join(i32(i) for i in range(width)) + pickle.APPENDS
    f = g("builtins", ctor) + put(1)
    body = pickle.EMPTY_LIST + x + pickle.APPEND + f + pickle.POP + pickle.MARK + (
        get(1) + get(0) + pickle.TUPLE1 + pickle.REDUCE) * copies + pickle.APPENDS
    data = lightning(body)
    path = torch_zip(tmp_path / "copies.ckpt", data)
    charged, budget = copies * (width + 1), 2 * len(data) + (1 << 20)
    if charged > budget:
        assert "copy more than" in refused(scan, path)
    elif charged < budget - 10_000:  # (the tensor's own calls are charged too)
        scan(path)


def test_list_of_a_string_is_refused(tmp_path: Path) -> None:
    body = g("builtins", "list") + pickle.MARK + s("x" * 10_000) + pickle.TUPLE + pickle.REDUCE
    assert "list() of a str" in refused(scan, torch_zip(tmp_path / "ls.ckpt", lightning(body)))


@FAST
@given(refs=st.integers(50, 4_000), size=st.integers(10_000, 200_000), kind=st.sampled_from(["bytes", "str"]))
@example(refs=736, size=21412, kind="bytes")  # bytes charged raw, written base64: once over the bound
def test_memo_referenced_leaves_are_bounded(tmp_path: Path, refs: int, size: int, kind: str) -> None:
    """One large bytes/str, referenced ``refs`` times: the output stays within the stated bound
    (the distinct bytes, as much again, plus 16 MiB), or the conversion is refused by name."""
    leaf = (pickle.BINBYTES + struct.pack("<I", size) + b"a" * size) if kind == "bytes" else s("a" * size)
    body = pickle.EMPTY_LIST + leaf + put(0) + pickle.APPEND + pickle.MARK + get(0) * refs + pickle.APPENDS
    path = torch_zip(tmp_path / "leaves.ckpt", lightning(body))
    dst = fresh(tmp_path / "out.anc")
    written = size * (refs + 1) * (4 / 3 if kind == "bytes" else 1)
    try:
        convert(path, dst, durable=False)
    except AncError as e:
        assert str(path) in e.line() and "references the same" in e.line()
        assert written > 16 << 20
        assert not dst.exists()
    else:
        assert dst.stat().st_size < 3 * size * (4 / 3) + (20 << 20)


def _np_array(raw_ref: bytes, shape: int) -> bytes:
    """``numpy.core.multiarray._reconstruct`` + BUILD of a float32 array over memo'd raw bytes."""
    dtype = g("numpy", "dtype") + pickle.MARK + s("f4") + pickle.NEWFALSE + pickle.NEWTRUE + pickle.TUPLE \
        + pickle.REDUCE + pickle.MARK + i32(3) + s("<") + pickle.NONE + pickle.NONE + pickle.NONE \
        + i32(-1) + i32(-1) + i32(0) + pickle.TUPLE + pickle.BUILD
    return (g("numpy.core.multiarray", "_reconstruct") + pickle.MARK + g("numpy", "ndarray")
            + pickle.MARK + i32(0) + pickle.TUPLE + s("b") + pickle.TUPLE + pickle.REDUCE
            + pickle.MARK + i32(1) + pickle.MARK + i32(shape) + pickle.TUPLE + dtype + pickle.NEWFALSE
            + raw_ref + pickle.TUPLE + pickle.BUILD)


@FAST
@given(refs=st.integers(20, 400), distinct=st.booleans())
def test_memo_referenced_numpy_arrays_are_one_tensor_or_bounded(tmp_path: Path, refs: int,
                                                                distinct: bool) -> None:
    n = 250_000  # 1 MB of float32
    raw = pickle.BINBYTES + struct.pack("<I", 4 * n) + b"\0" * (4 * n)
    if distinct:  # many arrays over the same bytes object
        body = pickle.EMPTY_LIST + raw + put(0) + pickle.POP + pickle.MARK + _np_array(get(0), n) * refs \
            + pickle.APPENDS
    else:  # one array, referenced many times
        body = pickle.EMPTY_LIST + _np_array(raw, n) + put(0) + pickle.APPEND + pickle.MARK \
            + get(0) * refs + pickle.APPENDS
    path = torch_zip(tmp_path / "arrays.ckpt", lightning(body))
    dst = fresh(tmp_path / "out.anc")
    try:
        convert(path, dst, durable=False)
    except AncError as e:
        assert distinct and str(path) in e.line(), e.line()
        assert not dst.exists()
    else:
        assert dst.stat().st_size <= 2 * path.stat().st_size + (20 << 20)


# --- 3. shared subtrees -------------------------------------------------------------------------

def shared_dicts(depth: int, leaf: bytes) -> bytes:
    """D0 = leaf; D_{i+1} = {"a": D_i, "b": D_i}: 2^depth paths through depth + 1 objects."""
    body = leaf + put(0)
    for i in range(depth):
        body += pickle.POP + pickle.EMPTY_DICT + s("a") + get(i) + pickle.SETITEM + s("b") + get(i) \
            + pickle.SETITEM + put(i + 1)
    return body


@FAST
@given(depth=st.integers(20, 60), where=st.sampled_from(["state_dict", "hyper_parameters", "supporting"]))
def test_shared_subtrees_are_not_expanded_path_by_path(tmp_path: Path, depth: int, where: str) -> None:
    leaf = pickle.EMPTY_DICT + s("w") + tensor("0", 2) + pickle.SETITEM
    tree = shared_dicts(depth, leaf)
    if where == "state_dict":
        data = lightning(pickle.EMPTY_DICT, state_dict=pickle.EMPTY_DICT + s("model") + tree + pickle.SETITEM)
    elif where == "hyper_parameters":
        data = lightning(tree)
    else:
        data = lightning(pickle.EMPTY_DICT + s("supporting_arrays") + tree + pickle.SETITEM
                         + s("metadata") + pickle.EMPTY_DICT + pickle.SETITEM)
    path = torch_zip(tmp_path / "shared.ckpt", data)
    dst = fresh(tmp_path / "out.anc")
    if where == "state_dict":
        assert "shares subtrees" in refused(convert, path, dst)
        assert not dst.exists()
    else:
        convert(path, dst, durable=False)
        assert dst.stat().st_size < 1 << 20


def _module(cls: str, children: bytes, params: bytes) -> bytes:
    """A pickled nn.Module: _reconstructor + BUILD of a state with _parameters/_buffers/_modules."""
    state = (pickle.EMPTY_DICT + pickle.MARK + s("_parameters") + pickle.EMPTY_DICT + params
             + s("_buffers") + pickle.EMPTY_DICT + s("_modules") + pickle.EMPTY_DICT + children
             + pickle.SETITEMS)
    return (g("copyreg", "_reconstructor") + pickle.MARK + g("mod", cls) + g("builtins", "object")
            + pickle.NONE + pickle.TUPLE + pickle.REDUCE + state + pickle.BUILD)


@FAST
@given(depth=st.integers(20, 60))
def test_shared_module_trees_are_bounded(tmp_path: Path, depth: int) -> None:
    body = _module("Leaf", b"", s("w") + tensor("0", 2) + pickle.SETITEM) + put(0)
    for i in range(depth):
        kids = pickle.MARK + s("a") + get(i) + s("b") + get(i) + pickle.SETITEMS
        body += pickle.POP + _module("Node", kids, b"") + put(i + 1)
    path = torch_zip(tmp_path / "mods.pt", P2 + body + pickle.STOP)
    assert "shares subtrees" in refused(convert, path, tmp_path / "out.anc")


# --- 4. overlapping views of one storage --------------------------------------------------------

@FAST
@given(views=st.integers(20, 400))
def test_overlapping_views_do_not_blow_up_the_output(tmp_path: Path, views: int) -> None:
    numel = 1 << 20  # a 4 MiB storage
    half = numel // 2
    sd = pickle.EMPTY_DICT + pickle.MARK + b"".join(
        s(f"v{i}") + tensor("0", numel, offset=i, size=(half,)) for i in range(views)) + pickle.SETITEMS
    path = torch_zip(tmp_path / "views.pt", P2 + sd + pickle.STOP, {"0": b"\0" * (4 * numel)})
    dst = fresh(tmp_path / "out.anc")
    limit = OUTPUT_FACTOR * path.stat().st_size + OUTPUT_SLACK
    if views * half * 4 > limit:
        assert "views of its storages overlap" in refused(convert, path, dst)
        assert not dst.exists()
    else:
        convert(path, dst, durable=False)
        assert dst.stat().st_size <= limit + (1 << 20)


def test_a_stride_zero_view_is_bounded(tmp_path: Path) -> None:
    sd = pickle.EMPTY_DICT + s("w") + tensor("0", 1, size=(1 << 26,), stride=(0,)) + pickle.SETITEM
    path = torch_zip(tmp_path / "expand.pt", P2 + sd + pickle.STOP, {"0": b"\0" * 4})
    assert "overlap" in refused(convert, path, tmp_path / "out.anc")


def test_ordinary_shared_views_still_convert(tmp_path: Path) -> None:
    x = torch.arange(12.0).reshape(3, 4)
    src = tmp_path / "ok.pt"
    torch.save({"x": x, "row": x[1], "t": x.t(), "same": x}, src)
    report = convert(src, tmp_path / "ok.anc", durable=False)
    assert report.verified == 4


def test_invalid_view_shapes_are_refused_by_name(tmp_path: Path) -> None:
    sd = pickle.EMPTY_DICT + s("w") + tensor("0", 2, size=(-1,), stride=(1,)) + pickle.SETITEM
    path = torch_zip(tmp_path / "neg.pt", P2 + sd + pickle.STOP)
    refused(convert, path, tmp_path / "out.anc")


# --- 5. FIFO ------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_scan_of_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(refused(scan, fifo)), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "scan blocked on a FIFO"
    assert result and "not a regular file" in result[0]


# --- fuzz: random and mutated opcode streams in a real torch zip ---------------------------------

def _seed_pickle() -> bytes:
    import io
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "cfg": {"a": [1, 2.5, "x", (1, 2)], "b": {3, 4}, "s": slice(1, 2)}}, buf)
    with zipfile.ZipFile(buf) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        return zf.read(name)


SEED = _seed_pickle()
OPCODES = [bytes([c]) for c in b"(.0123FGIJKLMNPRSTUVXabcdeghijklmnopqrstu}\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96\x97\x98"]


def _check_bounded(tmp_path: Path, data: bytes) -> None:
    path = torch_zip(tmp_path / "fuzz.pt", data, {"0": b"\0" * 8})
    try:
        scan(path)
    except AncError as e:
        assert str(path) in e.line()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.sampled_from(["flip", "insert", "delete"]),
                                 st.binary(min_size=1, max_size=6)), min_size=1, max_size=8))
def test_fuzz_mutated_torch_pickles(tmp_path: Path, edits) -> None:
    data = bytearray(SEED)
    for at, how, blob in edits:
        at = min(at, len(data) - 1)
        if how == "flip":
            data[at:at + len(blob)] = blob
        elif how == "insert":
            data[at:at] = blob
        else:
            del data[at:at + len(blob)]
    _check_bounded(tmp_path, bytes(data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(st.sampled_from(OPCODES), st.binary(min_size=1, max_size=4)), max_size=60),
       repeat=st.integers(1, 3_000))
def test_fuzz_random_opcode_streams(tmp_path: Path, ops, repeat: int) -> None:
    body = b"".join(ops)
    _check_bounded(tmp_path, P2 + body * (repeat if len(body) < 20 else 1) + pickle.STOP)


# --- 6. refusals name the file ------------------------------------------------------------------

@pytest.mark.parametrize("names", [[""], ["__metadata__"], ["a", "a."], ["a.b", ("a", "b")]])
def test_state_dict_names_are_kept_or_refused_by_name(tmp_path: Path, names) -> None:
    sd: dict = {}
    for n in names:
        if isinstance(n, tuple):
            sd.setdefault(n[0], {})[n[1]] = torch.ones(1)
        else:
            sd[n] = torch.ones(1)
    src = tmp_path / "names.pt"
    torch.save(sd, src)
    dst = fresh(tmp_path / "out.anc")
    if names in (["a", "a."],):
        assert convert(src, dst, durable=False).verified == 2  # two names, two tensors
    else:
        refused(convert, src, dst)
        assert not dst.exists()
