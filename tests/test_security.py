"""The read path never unpickles, never imports a name from the file, never runs its code."""

from __future__ import annotations

import builtins
import importlib
import pickle
from pathlib import Path

import pytest
import torch

import anemoi_ckpt
from anemoi_ckpt.summary import summarize


@pytest.fixture
def no_pickle_no_import(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the read path tried to unpickle or import dynamically")

    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(importlib, "import_module", refuse)
    real_import = builtins.__import__
    allowed_before = set(__import__("sys").modules)

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        # Our own modules (relative imports) and modules already loaded are fine; anything new
        # could be a name taken from the file.
        if level == 0 and name not in allowed_before and not name.startswith(("anemoi_ckpt", "tqdm")):
            raise AssertionError(f"the read path imported {name!r}")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", guarded_import)


def test_read_path_never_unpickles(demo_file: Path, no_pickle_no_import) -> None:
    with anemoi_ckpt.open(demo_file) as ck:
        ck.state_dict()
        ck.tensors("graph")
        assert ck.anemoi_metadata["version"] == "2.0"
        assert ck.supporting_arrays["data"]["latitudes"].shape == (512,)
        assert ck.lineage.records and ck.metadata.description == "test file"
        assert ck.verify().ok
        summarize(ck)
        ck.load_into(torch.nn.Module(), strict=False)


def test_class_names_in_metadata_are_inert(tmp_path: Path) -> None:
    """A builder or _target_ naming a module is data: opening never imports it."""
    path = tmp_path / "m.anc"
    anemoi_ckpt.save(path, {"w": torch.ones(1)},
                     metadata={"model": {"builder": "os.system", "config": {"_target_": "os.system"}}},
                     anemoi_metadata={"config": {"model": {"_target_": "subprocess.Popen"}}})
    with anemoi_ckpt.open(path) as ck:
        assert ck.metadata.model.builder == "os.system"
        assert ck.anemoi_metadata["config"]["model"]["_target_"] == "subprocess.Popen"


def test_a_pickle_inside_is_never_executed(tmp_path: Path) -> None:
    """A torch .ckpt (zip with data.pkl) is refused as 'not an .anc' without being unpickled."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.ckpt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(anemoi_ckpt.FormatError, match="no manifest.json"):
        anemoi_ckpt.open(path)
    assert not marker.exists()
