"""Malicious pickled checkpoints: ``scan`` and ``convert`` never run them, and say so.

Every payload below is a real exploit: a positive control loads it with
``torch.load(weights_only=False)`` and sees its canary appear (or its victim folder vanish).
Then the restricted path (``scan``, ``convert``, the real CLI for a subset) must leave no trace,
list every dangerous global as would-execute, and either convert with the payload as an inert
stand-in outside the weights, or refuse in one line naming a global.

fickling (a test-only tool; the package never imports it) is the cross-check: it must flag every
payload too, and for every module or callable on fickling's own unsafe lists our classifier must
agree that a pickle naming it would execute code.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import marshal
import operator
import os
import pickle
import runpy
import shutil
import struct
import subprocess
import sys
import time
import webbrowser
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import anemoi_ckpt
from anemoi_ckpt.convert import convert
from anemoi_ckpt.errors import AncError
from anemoi_ckpt.legacy.scan import scan
from anemoi_ckpt.legacy.standins import StandIn, TensorRef, walk
from anemoi_ckpt.legacy.torchzip import TorchZipCheckpoint

try:  # test-only dependency (the dev extra); the canary tests run without it
    import fickling
    from fickling.analysis import Severity, UnsafeImportsML, check_safety
    from fickling.fickle import SAFE_BUILTINS as FICKLING_SAFE_BUILTINS
    from fickling.fickle import UNSAFE_IMPORTS as FICKLING_UNSAFE_IMPORTS
    from fickling.fickle import Pickled
except ImportError:  # pragma: no cover
    fickling = None
    FICKLING_UNSAFE_IMPORTS = frozenset()
    FICKLING_SAFE_BUILTINS = frozenset()
    UnsafeImportsML = None

needs_fickling = pytest.mark.skipif(fickling is None, reason="fickling not installed (dev extra)")

REPO = Path(__file__).resolve().parent.parent


# --- building malicious checkpoints ---------------------------------------------------------------

class Reduce:
    """Pickles as ``func(*args)``. ``func`` may itself be a Reduce (the call of a call's result)."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):  # pickle insists that a reduce target is callable
        raise AssertionError("never called while pickling")


def s(text: str) -> bytes:
    """BINUNICODE opcode."""
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def g(module: str, name: str) -> bytes:
    """GLOBAL opcode."""
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)``: MARK args TUPLE REDUCE."""
    return func + pickle.MARK + b"".join(args) + pickle.TUPLE + pickle.REDUCE


def proto2(body: bytes) -> bytes:
    return pickle.PROTO + b"\x02" + body + pickle.STOP


def torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """torch's zip layout around a hand-crafted pickle."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", raw)
        zf.writestr("archive/version", "3\n")
    return path


def data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


@dataclass
class Ctx:
    tmp: Path
    canary: Path  # every payload creates it ...
    victim: Path  # ... or (shutil.rmtree) deletes this folder

    @property
    def cmd(self) -> str:
        return f"touch {self.canary}"

    @property
    def py_touch(self) -> str:
        return f"open({str(self.canary)!r}, 'w').close()"

    def saved(self, obj: object, name: str = "evil.pt") -> Path:
        path = self.tmp / name
        torch.save(obj, path)
        return path

    def raw(self, data: bytes, name: str = "evil.pt", storages: dict[str, bytes] | None = None) -> Path:
        return torch_zip(self.tmp / name, data, storages)

    def fired(self) -> bool:
        return self.canary.exists() or not (self.victim / "keep").exists()


def _os_system_raw(c: Ctx) -> Path:
    return c.raw(proto2(call(g("os", "system"), s(c.cmd))))


def _getattr_chain(c: Ctx) -> Path:  # getattr(__import__('os'), 'system')(cmd)
    os_mod = call(g("builtins", "__import__"), s("os"))
    return c.raw(proto2(call(call(g("builtins", "getattr"), os_mod, s("system")), s(c.cmd))))


def _import_module_chain(c: Ctx) -> Path:  # getattr(importlib.import_module('os'), 'system')(cmd)
    os_mod = call(g("importlib", "import_module"), s("os"))
    return c.raw(proto2(call(call(g("builtins", "getattr"), os_mod, s("system")), s(c.cmd))))


def _nested_torch_load(c: Ctx) -> Path:
    inner = c.saved(Reduce(os.system, c.cmd), "inner.pt")
    return c.saved(Reduce(functools.partial(torch.load, weights_only=False), str(inner)))


def _numpy_load(c: Ctx) -> Path:  # numpy.load(path, None, True): allow_pickle on an object array
    inner = c.tmp / "inner.npy"
    np.save(inner, np.array([Reduce(os.system, c.cmd)], dtype=object), allow_pickle=True)
    return c.saved(Reduce(np.load, str(inner), None, True))


def _webbrowser(c: Ctx) -> Path:
    return c.saved(Reduce(webbrowser.open, str(c.canary)))


def _copyreg_reconstructor(c: Ctx) -> Path:
    # copyreg._reconstructor(Popen, Popen, argv) runs Popen.__init__(obj, argv)
    popen = g("subprocess", "Popen")
    argv = pickle.MARK + s("touch") + s(str(c.canary)) + pickle.LIST
    return c.raw(proto2(call(g("copyreg", "_reconstructor"), popen, popen, argv)))


def _build_setstate(c: Ctx, target: bytes) -> bytes:
    # BUILD {'__setstate__': os.system} plants an instance attribute; the next BUILD calls it.
    plant = pickle.EMPTY_DICT + s("__setstate__") + g("os", "system") + pickle.SETITEM + pickle.BUILD
    return proto2(target + plant + s(c.cmd) + pickle.BUILD)


def _build_on_class(c: Ctx) -> Path:
    return c.raw(_build_setstate(c, g("argparse", "Namespace") + pickle.EMPTY_TUPLE + pickle.NEWOBJ))


def _build_on_allowed(c: Ctx) -> Path:  # the same on an allow-listed OrderedDict
    return c.raw(_build_setstate(c, call(g("collections", "OrderedDict"))))


def _inst(c: Ctx) -> Path:  # protocol 0: (S'cmd' ios\nsystem\n
    return c.raw(pickle.MARK + b"S" + repr(c.cmd).encode() + b"\n" + pickle.INST + b"os\nsystem\n" + pickle.STOP)


def _obj(c: Ctx) -> Path:  # protocol 1: ( cos\nsystem\n X..cmd o
    return c.raw(pickle.MARK + g("os", "system") + s(c.cmd) + pickle.OBJ + pickle.STOP)


def _stack_global(c: Ctx, module: str, name: str) -> Path:
    def u(text: str) -> bytes:
        return pickle.SHORT_BINUNICODE + bytes([len(text)]) + text.encode()

    body = u(module) + u(name) + pickle.STACK_GLOBAL + u(c.cmd) + pickle.TUPLE1 + pickle.REDUCE
    return c.raw(pickle.PROTO + b"\x04" + body + pickle.STOP)


def _raw_state_dict(c: Ctx) -> Path:
    """{'w': tensor (a real storage in archive/data/0), 'x': os.system(cmd)}, opcode by opcode."""
    pid = pickle.MARK + s("storage") + g("torch", "FloatStorage") + s("0") + s("cpu") \
        + pickle.BININT1 + b"\x02" + pickle.TUPLE + pickle.BINPERSID
    tensor = call(g("torch._utils", "_rebuild_tensor_v2"), pid, pickle.BININT1 + b"\x00",
                  pickle.BININT1 + b"\x02" + pickle.TUPLE1, pickle.BININT1 + b"\x01" + pickle.TUPLE1,
                  pickle.NEWFALSE, call(g("collections", "OrderedDict")))
    body = pickle.EMPTY_DICT + pickle.MARK + s("w") + tensor + s("x") + call(g("os", "system"), s(c.cmd)) \
        + pickle.SETITEMS
    return c.raw(proto2(body), storages={"0": np.array([1.5, -2.0], dtype="<f4").tobytes()})


def _lightning(c: Ctx) -> Path:
    return c.saved({"pytorch-lightning_version": "2.4.0", "state_dict": {"model.w": torch.ones(2)},
                    "optimizer_states": [{"state": {}, "param_groups": []}], "epoch": 3, "global_step": 120,
                    "hyper_parameters": {"config": {"model": [1, {"deep": Reduce(os.system, c.cmd)}]}}},
                   "lightning.ckpt")


def _module_dict(c: Ctx) -> Path:
    model = torch.nn.Linear(3, 2)
    model.evil = Reduce(os.system, c.cmd)  # a plain attribute: lands in the module's __dict__
    return c.saved(model, "model.pt")


@dataclass
class Payload:
    build: Callable[[Ctx], Path]
    dangerous: frozenset[str]  # globals scan must list as dangerous and would-execute
    outcome: str = "refuse"  # "refuse" (one line naming a global), "convert" or "either"
    weights: tuple[str, ...] = ()  # the tensors a conversion keeps


def P(build, *dangerous, outcome="refuse", weights=()) -> Payload:
    return Payload(build, frozenset(dangerous), outcome, weights)


PAYLOADS: dict[str, Payload] = {
    "os.system": P(_os_system_raw, "os.system"),
    "posix.system": P(lambda c: c.saved(Reduce(os.system, c.cmd)), "posix.system"),
    "subprocess.Popen": P(lambda c: c.saved(Reduce(subprocess.Popen, ["touch", str(c.canary)])),
                          "subprocess.Popen"),
    "subprocess.check_output": P(lambda c: c.saved(Reduce(subprocess.check_output, ["touch", str(c.canary)])),
                                 "subprocess.check_output"),
    "builtins.eval": P(lambda c: c.saved(Reduce(eval, c.py_touch)), "builtins.eval"),
    "builtins.exec": P(lambda c: c.saved(Reduce(exec, c.py_touch)), "builtins.exec"),
    "builtins.__import__": P(lambda c: c.saved(Reduce(operator.methodcaller("system", c.cmd),
                                                      Reduce(__import__, "os"))),
                             "builtins.__import__", "operator.methodcaller"),
    "getattr chain": P(_getattr_chain, "builtins.getattr", "builtins.__import__"),
    "builtins.compile": P(lambda c: c.saved(Reduce(eval, Reduce(compile, c.py_touch, "<p>", "eval"))),
                          "builtins.eval", "builtins.compile"),
    "runpy._run_code": P(lambda c: c.saved(Reduce(runpy._run_code, Reduce(
        marshal.loads, marshal.dumps(compile(c.py_touch, "<p>", "exec"))), {})),
        "runpy._run_code", "marshal.loads"),
    "importlib.import_module": P(_import_module_chain, "builtins.getattr", "importlib.import_module"),
    "pickle.loads": P(lambda c: c.saved(Reduce(pickle.loads, pickle.dumps(Reduce(os.system, c.cmd)))),
                      "pickle.loads"),
    "torch.load": P(_nested_torch_load, "functools.partial", "torch.serialization.load"),
    "numpy.load": P(_numpy_load, "numpy.load"),
    "shutil.rmtree": P(lambda c: c.saved(Reduce(shutil.rmtree, str(c.victim))), "shutil.rmtree"),
    "webbrowser.open": P(_webbrowser, "webbrowser.open"),
    "operator.attrgetter": P(lambda c: c.saved(Reduce(Reduce(operator.attrgetter("system"),
                                                             Reduce(importlib.import_module, "os")), c.cmd)),
                             "operator.attrgetter", "importlib.import_module"),
    "operator.methodcaller": P(lambda c: c.saved(Reduce(operator.methodcaller("system", c.cmd),
                                                        Reduce(importlib.import_module, "os"))),
                               "operator.methodcaller", "importlib.import_module"),
    "functools.partial": P(lambda c: c.saved(Reduce(functools.partial(os.system, c.cmd))),
                           "functools.partial", "posix.system"),
    "copyreg._reconstructor": P(_copyreg_reconstructor, "subprocess.Popen"),
    "BUILD __setstate__ on a class": P(_build_on_class, "os.system"),
    "BUILD __setstate__ on an allowed dict": P(_build_on_allowed, "os.system", outcome="either"),
    "INST (protocol 0)": P(_inst, "os.system"),
    "OBJ (protocol 1)": P(_obj, "os.system"),
    "STACK_GLOBAL": P(lambda c: _stack_global(c, "posix", "system"), "posix.system"),
    "STACK_GLOBAL attribute path": P(lambda c: _stack_global(c, "torch", "os.system"), "torch.os.system"),
    "in a state dict value": P(lambda c: c.saved({"w": torch.ones(2), "x": Reduce(os.system, c.cmd)}),
                               "posix.system"),
    "in a hand-made state dict": P(_raw_state_dict, "os.system"),
    "in Lightning hyper_parameters": P(_lightning, "posix.system", outcome="either"),
    "in a module's __dict__": P(_module_dict, "posix.system", outcome="convert", weights=("bias", "weight")),
}


@pytest.fixture
def ctx(tmp_path: Path) -> Ctx:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    return Ctx(tmp_path, tmp_path / "canary", victim)


def _wait_fired(c: Ctx, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds  # Popen and webbrowser run in a child process
    while time.monotonic() < deadline:
        if c.fired():
            return True
        time.sleep(0.02)
    return c.fired()


# --- positive control: every payload is live -----------------------------------------------------

@pytest.mark.parametrize("case", list(PAYLOADS))
def test_payload_is_live_under_torch_load(ctx: Ctx, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Proves the canary assertions below are not vacuous."""
    script = ctx.tmp / "browser.sh"  # webbrowser.open runs $BROWSER: make it touch its argument
    script.write_text('#!/bin/sh\ntouch "$1"\n')
    script.chmod(0o755)
    monkeypatch.setenv("BROWSER", str(script))
    monkeypatch.setattr(webbrowser, "_tryorder", None)
    monkeypatch.setattr(webbrowser, "_browsers", {})
    path = PAYLOADS[case].build(ctx)
    assert not ctx.fired()
    torch.load(path, weights_only=False)
    assert _wait_fired(ctx), case


# --- the restricted path, through the Python API -------------------------------------------------

def _reachable(root: object) -> list[object]:
    """walk(), also into instance attributes (a BUILD can plant them on an allowed OrderedDict)."""
    out, todo = [], [root]
    while todo:
        for node in walk(todo.pop()):
            out.append(node)
            if not isinstance(node, (type, StandIn)) and getattr(node, "__dict__", None):
                todo.append(dict(vars(node)))
    return out


def _check_scan(report, payload: Payload) -> None:
    rows = {row["global"]: row for row in report.to_dict()["globals"]}  # what scan --json prints
    for name in payload.dangerous:
        assert name in rows, (name, sorted(rows))
        assert rows[name]["dangerous"] and rows[name]["would_execute"], rows[name]
    for row in rows.values():
        if row["dangerous"]:
            assert row["would_execute"], row
    assert payload.dangerous <= set(report.dangerous) and payload.dangerous <= set(report.executing)
    assert not report.safe_for_weights_only


def _check_converted(dst: Path, src: Path, payload: Payload) -> None:
    with TorchZipCheckpoint(src) as ck:  # the source's real tensors, read without torch.load
        source = [ck.tensor(n).clone() for n in walk(ck.obj) if isinstance(n, TensorRef)]
    with anemoi_ckpt.open(dst) as out:  # views over the file's map: compare before closing
        got = out.state_dict()
        if payload.weights:
            assert tuple(sorted(got)) == payload.weights
        for name, t in got.items():  # only tensors from the file: the payload is no weight
            assert isinstance(t, torch.Tensor)
            assert any(t.dtype == u.dtype and t.shape == u.shape and torch.equal(t, u) for u in source), name


@pytest.mark.parametrize("case", list(PAYLOADS))
def test_scan_and_convert_never_execute(ctx: Ctx, case: str) -> None:
    payload = PAYLOADS[case]
    src = payload.build(ctx)
    report = scan(src)
    assert not ctx.fired()
    _check_scan(report, payload)
    with TorchZipCheckpoint(src) as ck:  # the payload is recorded as an inert stand-in
        assert any(isinstance(n, StandIn) or (isinstance(n, type) and issubclass(n, StandIn))
                   for n in _reachable(ck.obj))
    dst = ctx.tmp / "out.anc"
    try:
        convert(src, dst, progress=False)
    except AncError as e:
        assert payload.outcome in ("refuse", "either"), f"{case}: refused: {e}"
        line = str(e)
        assert "\n" not in line
        if "Lightning" not in line:  # the Lightning refusal is about the format, not a global
            assert any(name in line for name in report.executing), (line, report.executing)
        assert not dst.exists()
    else:
        assert payload.outcome in ("convert", "either"), f"{case}: converted"
        _check_converted(dst, src, payload)
    assert not _wait_fired(ctx, 0.05)


# --- the real CLI, for a representative subset ---------------------------------------------------

#: case -> also run `convert` through the CLI (a torch import: ~4 s of CPU each, so only three)
CLI_CASES = {"os.system": False, "getattr chain": False, "STACK_GLOBAL attribute path": False,
             "in a state dict value": True, "in Lightning hyper_parameters": True,
             "in a module's __dict__": True}


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anemoi_ckpt", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONWARNINGS": "default"})


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_scan_and_convert_never_execute(ctx: Ctx, case: str) -> None:
    payload = PAYLOADS[case]
    src = payload.build(ctx)
    dst = ctx.tmp / "out.anc"
    text_mode = case == next(iter(CLI_CASES))  # the table output, once
    procs = [_cli("scan", str(src), "--json"),  # side by side: the runs are mostly start-up
             _cli("convert", str(src), str(dst)) if CLI_CASES[case] else None,
             _cli("scan", str(src)) if text_mode else None]
    outs = [p.communicate(timeout=120) if p else ("", "") for p in procs]
    (scan_out, scan_err), text = outs[0], outs[2][0]
    assert procs[0].returncode == 0, scan_err
    if text_mode:
        assert procs[2].returncode == 0 and "would execute code" in text
    report = json.loads(scan_out)
    rows = {row["global"]: row for row in report["globals"]}
    for name in payload.dangerous:
        assert rows[name]["would_execute"] and rows[name]["dangerous"], rows.get(name)
        assert name in report["dangerous"] and name in report["executing"]
        if text_mode:
            assert name in text and "DANGEROUS" in text
    assert report["safe_for_weights_only"] is False
    if CLI_CASES[case]:
        conv_out, conv_err = outs[1]
        if procs[1].returncode == 0:
            assert payload.outcome in ("convert", "either"), conv_out
            assert dst.exists() and "verified bit for bit" in conv_out
            _check_converted(dst, src, payload)
        else:
            assert payload.outcome in ("refuse", "either"), conv_err
            assert procs[1].returncode == 1 and "Traceback" not in conv_err and not dst.exists()
            assert conv_err.count("\n") == 1 and conv_err.startswith("anemoi-ckpt: error: "), conv_err
            if "Lightning" not in conv_err:
                assert any(name in conv_err for name in report["executing"]), conv_err
    assert not _wait_fired(ctx, 0.05)


# --- fickling agrees ------------------------------------------------------------------------------

def _fickling_severity(data: bytes):
    return check_safety(Pickled.load(data)).severity


@needs_fickling
@pytest.mark.parametrize("case", list(PAYLOADS))
def test_fickling_flags_every_payload_and_scan_agrees(ctx: Ctx, case: str) -> None:
    src = PAYLOADS[case].build(ctx)
    data = data_pkl(src)
    (ctx.tmp / "data.pkl").write_bytes(data)
    assert not fickling.is_likely_safe(str(ctx.tmp / "data.pkl"))
    severity = _fickling_severity(data)
    assert severity >= Severity.LIKELY_UNSAFE, severity
    report = scan(src)
    assert report.executing, "fickling flags it, scan must list a global that would execute"
    if severity >= Severity.LIKELY_OVERTLY_MALICIOUS:
        assert report.dangerous, (severity, report.globals)
    assert not ctx.fired()


def _unsafe_targets() -> list[tuple[str, str]]:
    """(module, name) for every entry on fickling's unsafe lists, one GLOBAL each."""
    if fickling is None:
        return []
    targets = []
    for module in sorted(FICKLING_UNSAFE_IMPORTS):  # whole modules: any callable in them
        if module in ("builtins", "__builtin__", "__builtins__"):
            targets += [(module, n) for n in ("eval", "exec", "getattr", "__import__", "open", "type")]
        else:
            targets.append((module, "system"))
    targets += [(m, "run") for m in sorted(UnsafeImportsML.UNSAFE_MODULES)]
    targets += [(m, n) for m, names in sorted(UnsafeImportsML.UNSAFE_IMPORTS.items()) for n in sorted(names)]
    return targets


def _fickling_unsafe_builtins() -> list[str]:
    if fickling is None:
        return []
    return sorted(n for n in dir(__import__("builtins")) if n not in FICKLING_SAFE_BUILTINS
                  and not n[0].isupper() and n not in ("__doc__", "__name__", "__package__"))


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One conversion first, so the modules the converter imports lazily are loaded."""
    tmp = tmp_path_factory.mktemp("warm")
    torch.save({"w": torch.ones(1)}, tmp / "w.pt")
    convert(tmp / "w.pt", tmp / "w.anc", progress=False)


def _global_reduce_roundtrip(tmp: Path, module: str, name: str, *, called: bool) -> None:
    canary = tmp / "canary"
    body = call(g(module, name), s(f"touch {canary}")) if called else \
        pickle.EMPTY_DICT + s("x") + g(module, name) + pickle.SETITEM
    src = torch_zip(tmp / "one.pt", proto2(body))
    fresh = [m for m in {module, module.split(".")[0]} if m not in sys.modules]
    report = scan(src)
    row = next(r for r in report.globals if r["global"] == f"{module}.{name}"
               or r["global"].endswith(f".{name}"))  # __builtin__ is renamed to builtins
    assert row["dangerous"] and row["would_execute"], row
    assert not row["allowed"]
    if called:
        assert row["calls"] == 1
    with pytest.raises(AncError) as err:
        convert(src, tmp / "one.anc", progress=False)
    assert "\n" not in str(err.value)
    assert not canary.exists()
    assert not [m for m in fresh if m in sys.modules], f"{module} was imported"


@needs_fickling
@pytest.mark.parametrize("module,name", _unsafe_targets(), ids=lambda v: v)
def test_every_fickling_unsafe_import_would_execute(tmp_path: Path, warm: None, module: str, name: str) -> None:
    """GLOBAL+REDUCE for each of fickling's unsafe modules/callables: scan says would-execute and
    dangerous, conversion refuses, nothing is imported or called. Fickling agrees it is unsafe."""
    raw = proto2(call(g(module, name), s("x")))
    assert _fickling_severity(raw) >= Severity.LIKELY_OVERTLY_MALICIOUS
    _global_reduce_roundtrip(tmp_path, module, name, called=True)


@needs_fickling
@pytest.mark.parametrize("module,name", _unsafe_targets(), ids=lambda v: v)
def test_every_fickling_unsafe_import_is_dangerous_even_uncalled(tmp_path: Path, module: str, name: str) -> None:
    """Only referenced (a callable stored as a value, called later by whoever trusts it)."""
    report = scan(torch_zip(tmp_path / "one.pt", proto2(pickle.EMPTY_DICT + s("x") + g(module, name)
                                                        + pickle.SETITEM)))
    row = next(r for r in report.globals if r["global"].endswith(f".{name}"))
    assert row["dangerous"] and row["would_execute"] and row["calls"] == 0, row


@needs_fickling
@pytest.mark.parametrize("name", _fickling_unsafe_builtins())
def test_builtins_fickling_calls_unsafe_are_dangerous(tmp_path: Path, name: str) -> None:
    raw = proto2(call(g("builtins", name), s("x")))
    assert _fickling_severity(raw) >= Severity.LIKELY_OVERTLY_MALICIOUS
    report = scan(torch_zip(tmp_path / "b.pt", raw))
    assert report.dangerous == [f"builtins.{name}"] and report.executing == [f"builtins.{name}"]


# --- benign controls ------------------------------------------------------------------------------

def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU())


def test_benign_state_dict_scans_clean_and_converts(tmp_path: Path) -> None:
    model = _model()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    report = scan(tmp_path / "sd.pt")
    assert report.executing == [] and report.dangerous == [] and report.safe_for_weights_only
    assert all(row["allowed"] for row in report.globals), report.globals
    r = convert(tmp_path / "sd.pt", tmp_path / "sd.anc", progress=False)
    assert r.verified == len(model.state_dict())
    with anemoi_ckpt.open(tmp_path / "sd.anc") as ck:
        got = ck.state_dict()
        assert got.keys() == model.state_dict().keys()
        assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_benign_module_scans_without_dangerous_globals_and_converts(tmp_path: Path) -> None:
    model = _model()
    torch.save(model, tmp_path / "m.pt")
    report = scan(tmp_path / "m.pt")
    assert report.dangerous == []
    # torch.load would instantiate the module classes themselves, and nothing else
    assert set(report.executing) == {"torch.nn.modules.container.Sequential", "torch.nn.modules.linear.Linear",
                                     "torch.nn.modules.batchnorm.BatchNorm1d",
                                     "torch.nn.modules.activation.ReLU"}
    r = convert(tmp_path / "m.pt", tmp_path / "m.anc", progress=False)
    assert r.format == "torch-module" and r.verified == len(model.state_dict())
    with anemoi_ckpt.open(tmp_path / "m.anc") as ck:
        got = ck.state_dict()
        assert got.keys() == model.state_dict().keys()
        assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_fickling_is_a_test_only_tool() -> None:
    """The package never imports fickling (it is in the dev extra only)."""
    import re

    for py in (REPO / "anemoi_ckpt").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+fickling|import_module\(.fickling", py.read_text(), re.M), py
