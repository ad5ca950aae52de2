"""The restricted unpickler: malicious pickles never run, and tensors come back exactly as
torch.load gives them, without torch.load."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from anemoi_ckpt import FormatError
from anemoi_ckpt.legacy.scan import scan
from anemoi_ckpt.legacy.standins import StandIn, TensorRef, walk
from anemoi_ckpt.legacy.torchzip import TorchZipCheckpoint
from anemoi_ckpt.legacy.unpickler import resolve_numpy
from tests.conftest import run_cli


def torch_zip_with_pickle(path: Path, pickle_bytes: bytes) -> Path:
    """A torch-layout zip whose data.pkl is exactly ``pickle_bytes`` (hand-crafted payloads)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/version", b"3\n")
    return path


class Reduce:
    """Pickles as ``func(*args)``: what a malicious checkpoint embeds."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(canary: Path) -> dict[str, object]:
    cmd = f"touch {canary}"
    return {
        "os.system": Reduce(os.system, cmd),
        "eval": Reduce(eval, f"open({str(canary)!r}, 'w')"),
        "exec": Reduce(exec, f"open({str(canary)!r}, 'w').close()"),
        "subprocess.Popen": Reduce(subprocess.Popen, ["touch", str(canary)]),
        "subprocess.check_output": Reduce(subprocess.check_output, ["touch", str(canary)]),
        "open": Reduce(open, str(canary), "w"),
        "nested in a state dict": {"state_dict": {"w": torch.ones(2), "x": Reduce(os.system, cmd)}},
        "nested in hyper_parameters": {"hyper_parameters": {"config": [1, {"deep": Reduce(eval, f"open({str(canary)!r}, 'w')")}]},
                                       "state_dict": {"w": torch.ones(2)}},
        "reduce inside reduce args": Reduce(print, Reduce(os.system, cmd)),
    }


@pytest.mark.parametrize("case", list(payloads(Path("/x"))))
def test_malicious_pickles_never_execute(tmp_path: Path, case: str) -> None:
    canary = tmp_path / "canary"
    path = tmp_path / "evil.ckpt"
    torch.save(payloads(canary)[case], path)
    report = scan(path)
    with TorchZipCheckpoint(path) as ck:
        nodes = list(walk(ck.obj))
    assert not canary.exists()
    assert report.executing and report.dangerous, report
    assert not report.safe_for_weights_only
    assert any(isinstance(n, StandIn) for n in nodes)  # recorded as inert stand-ins
    if "state dict" in case or "hyper" in case:
        assert report.tensors == 1


def test_getattr_import_chain_never_executes(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    raw = (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch "
           + str(canary).encode() + b"'\ntR.")
    path = torch_zip_with_pickle(tmp_path / "chain.ckpt", raw)
    report = scan(path)
    assert not canary.exists()
    assert set(report.dangerous) == {"builtins.getattr", "builtins.__import__"}
    with TorchZipCheckpoint(path) as ck:
        assert isinstance(ck.obj, StandIn) and ck.obj.dotted == "builtins.getattr()"


def test_scan_cli_lists_dangerous_globals(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    torch.save({"w": torch.ones(3), "x": Reduce(os.system, f"touch {canary}")}, tmp_path / "e.ckpt")
    out = run_cli("scan", str(tmp_path / "e.ckpt"), "--json")
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads(out.stdout)
    assert report["dangerous"] == ["posix.system"] and not report["safe_for_weights_only"]
    assert report["tensors"] == 1
    text = run_cli("scan", str(tmp_path / "e.ckpt")).stdout
    assert "posix.system" in text and "DANGEROUS" in text
    assert not canary.exists()


def test_plain_state_dict_is_safe(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3), "b": torch.zeros(1)}, tmp_path / "sd.pt")
    report = scan(tmp_path / "sd.pt")
    assert report.safe_for_weights_only and report.dangerous == [] and report.tensors == 2


def test_module_pickle_becomes_inert_tree(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    torch.save(model, tmp_path / "model.pt")
    with TorchZipCheckpoint(tmp_path / "model.pt") as ck:
        assert ck.obj.dotted == "torch.nn.modules.container.Sequential"
        refs = [n for n in walk(ck.obj) if isinstance(n, TensorRef)]
        assert len(refs) == len(model.state_dict())  # weights, biases, running stats, counter
        tensors = sorted((tuple(ck.tensor(r).shape) for r in refs))
        assert tensors == sorted(tuple(t.shape) for t in model.state_dict().values())
    report = scan(tmp_path / "model.pt")
    assert "torch.nn.modules.linear.Linear" in report.executing and report.dangerous == []


def test_numpy_arrays_and_scalars_rebuilt_from_bytes(tmp_path: Path) -> None:
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "f": np.asfortranarray(np.eye(3)),
           "s": np.float64(2.5), "i": np.int16(-3), "big": np.arange(3, dtype=">i4"),
           "obj": np.array([1, "x"], dtype=object)}
    torch.save(obj, tmp_path / "np.pt")
    with TorchZipCheckpoint(tmp_path / "np.pt") as ck:
        got = {k: resolve_numpy(v) for k, v in ck.obj.items()}
    for k in ("a", "f", "big"):
        assert isinstance(got[k], np.ndarray) and np.array_equal(got[k], obj[k]), k
    assert got["s"] == 2.5 and got["i"] == -3
    assert isinstance(got["obj"], StandIn)  # object arrays are never rebuilt


def test_legacy_format_and_garbage_are_refused(tmp_path: Path) -> None:
    torch.save({"a": torch.ones(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match="pre-1.6.*re-save it with torch >= 1.6"):
        TorchZipCheckpoint(tmp_path / "old.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(FormatError, match="not a torch zip checkpoint"):
        TorchZipCheckpoint(tmp_path / "junk.pt")
    path = torch_zip_with_pickle(tmp_path / "bad.pt", b"\x80\x02}q\x00(X\x01")
    with pytest.raises(FormatError, match="data.pkl cannot be read safely"):
        TorchZipCheckpoint(path)
    out = run_cli("scan", str(tmp_path / "old.pt"))
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_view_beyond_its_storage_is_refused(tmp_path: Path) -> None:
    torch.save({"a": torch.arange(4.0)}, tmp_path / "v.pt")
    with TorchZipCheckpoint(tmp_path / "v.pt") as ck:
        ref = ck.obj["a"]
        ref.size = (8,)
        with pytest.raises(FormatError, match="exceeds its storage"):
            ck.tensor(ref)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int8, torch.uint8, torch.bool, torch.complex64]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3),
                          st.sampled_from(["plain", "transpose", "slice", "param", "shared"])),
                max_size=6))
def test_tensors_equal_torch_load(tmp_path: Path, specs) -> None:
    base = torch.arange(64, dtype=torch.float64)
    sd = {}
    for i, (dtype, shape, how) in enumerate(specs):
        t = (torch.rand(shape, dtype=torch.float64) * 100).to(dtype)
        if how == "transpose" and t.dim() >= 2:
            t = t.transpose(0, 1)
        elif how == "slice" and t.dim() >= 1:
            t = t[::2]
        elif how == "param" and t.is_floating_point():
            t = torch.nn.Parameter(t)
        elif how == "shared":
            t = base[i:i + 5]
        sd[f"t{i}"] = t
    buf = io.BytesIO()
    torch.save(sd, buf)
    (tmp_path / "h.pt").write_bytes(buf.getvalue())
    expected = torch.load(tmp_path / "h.pt", weights_only=True)
    with TorchZipCheckpoint(tmp_path / "h.pt") as ck:
        for k, ref in ck.obj.items():
            got = ck.tensor(ref)
            assert got.dtype == expected[k].dtype and got.shape == expected[k].shape
            assert got.stride() == expected[k].stride() and torch.equal(got, expected[k]), k
