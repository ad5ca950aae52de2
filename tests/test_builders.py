"""Model builders (allow-list, entry points, never an import by a file's name), the reference model
and the synthetic dataset."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import anemoi_ckpt
from anemoi_ckpt.builders import (BUILDERS, BuilderError, build_model, known_builders,
                                  model_from_checkpoint, model_spec, register_builder, resolve_builder)
from anemoi_ckpt.errors import AncError, FormatError
from anemoi_ckpt.models.reference import PRESETS, ReferenceModel, count_parameters
from anemoi_ckpt.trainer.data import SyntheticWeather

TINY = {"builder": "reference", "config": {"size": "tiny"}}


def tiny(seed: int = 0, **overrides: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model({"builder": "reference", "config": {"size": "tiny", **overrides}})


# --- registry ------------------------------------------------------------------------------------

def test_allow_list_and_register_builder() -> None:
    assert "reference" in BUILDERS and resolve_builder("reference") is BUILDERS["reference"]

    @register_builder("test-linear")
    def _linear(config: dict) -> torch.nn.Module:
        return torch.nn.Linear(config["n"], 1)

    try:
        m = build_model({"builder": "test-linear", "config": {"n": 3}})
        assert isinstance(m, torch.nn.Linear)
        # A builder that records no spec gets the one it was built from.
        assert model_spec(m) == {"builder": "test-linear", "config": {"n": 3}}
        with pytest.raises(ValueError, match="already registered"):
            register_builder("test-linear")(lambda c: torch.nn.Linear(1, 1))
    finally:
        del BUILDERS["test-linear"]


def test_unknown_builder_is_one_line_listing_known() -> None:
    with pytest.raises(BuilderError) as exc:
        build_model({"builder": "no-such\nbuilder", "config": {}})
    line = exc.value.line()
    assert "\n" not in line and "unknown model builder" in line and "reference" in line
    assert isinstance(exc.value, AncError)


def _install_fake_distribution(root: Path, module: str, ep_name: str) -> None:
    """A real (if minimal) installed distribution on ``root``: importlib.metadata finds it."""
    dist = root / "anemoi_ckpt_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: anemoi-ckpt-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[anemoi_ckpt.model_builders]\n{ep_name} = {module}:build\n")
    (root / f"{module}.py").write_text(textwrap.dedent("""
        import torch
        IMPORTED = True
        def build(config):
            torch.manual_seed(config.get("seed", 0))
            return torch.nn.Linear(config["n"], 2)
    """))


def test_entry_point_builder_is_found_and_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_distribution(tmp_path, "anc_plugin_ep", "plugin-linear")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "anc_plugin_ep", raising=False)
    assert "plugin-linear" in known_builders()
    assert "anc_plugin_ep" not in sys.modules  # listing names loads nothing
    m = build_model({"builder": "plugin-linear", "config": {"n": 5}})
    assert isinstance(m, torch.nn.Linear) and m.in_features == 5
    assert "anc_plugin_ep" in sys.modules
    path = tmp_path / "plugin.anc"
    anemoi_ckpt.save(path, m.state_dict(), metadata={"model": model_spec(m)})
    again = model_from_checkpoint(path)
    assert torch.equal(again.weight, m.weight)


def test_a_name_in_a_file_never_imports_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Importable modules on sys.path, one of them even the target of an installed entry point: a file
    # naming them (as a module, a module:function, or the entry point's value) imports neither.
    _install_fake_distribution(tmp_path, "anc_plugin_value", "plugin-ok")
    (tmp_path / "anc_evil.py").write_text("raise SystemExit('imported by name from a file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("anc_evil", "anc_evil:build", "anc_plugin_value:build", "anc_plugin_value", "os:system"):
        path = tmp_path / "evil.anc"
        anemoi_ckpt.save(path, {"w": torch.ones(1)}, metadata={"model": {"builder": name, "config": {}}})
        with pytest.raises(BuilderError, match="unknown model builder") as exc:
            model_from_checkpoint(path)
        assert str(path) in exc.value.line()
    assert "anc_evil" not in sys.modules and "anc_plugin_value" not in sys.modules


# --- build, save, load ---------------------------------------------------------------------------

def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = tiny(seed=3)
    path = tmp_path / "ref.anc"
    anemoi_ckpt.save(path, model.state_dict(), metadata={"model": model_spec(model)})
    torch.manual_seed(99)  # a different init, so only the loaded weights can make outputs agree
    loaded = model_from_checkpoint(path)
    x = torch.randn(2, model.grid_size, model.n_vars)
    assert torch.equal(model(x), loaded(x))
    with anemoi_ckpt.open(path) as ck:  # an open Checkpoint works too
        assert ck.metadata.model.builder == "reference"
        assert torch.equal(model_from_checkpoint(ck)(x), model(x))


def test_same_seed_same_model_and_spec_is_complete() -> None:
    a, b = tiny(seed=7), tiny(seed=7)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    spec = model_spec(a)
    assert spec["builder"] == "reference"
    # Every field is recorded, so a saved model does not depend on today's presets.
    assert spec["config"] == {"size": "tiny", **PRESETS["tiny"]}
    assert model_spec(build_model(spec)) == spec


def test_strict_loading_catches_a_missing_tensor(tmp_path: Path) -> None:
    model = tiny()
    sd = model.state_dict()
    del sd["processor.proc.1.attention.lin_v.weight"]
    path = tmp_path / "missing.anc"
    anemoi_ckpt.save(path, sd, metadata={"model": model_spec(model)})
    with pytest.raises(FormatError, match="1 missing tensor.*lin_v"):
        model_from_checkpoint(path)
    assert isinstance(model_from_checkpoint(path, strict=False), ReferenceModel)


def test_a_grid_mismatch_fails_on_the_position_buffer(tmp_path: Path) -> None:
    model = tiny()
    spec = model_spec(model)
    spec["config"]["n_lon"] = 32
    path = tmp_path / "grid.anc"
    anemoi_ckpt.save(path, model.state_dict(), metadata={"model": spec})
    with pytest.raises(FormatError, match="shape mismatch.*grid_features"):
        model_from_checkpoint(path)


def test_a_file_without_a_builder_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bare.anc"
    anemoi_ckpt.save(path, tiny().state_dict())
    with pytest.raises(BuilderError, match=r"has no model builder \(metadata.model\)") as exc:
        model_from_checkpoint(path)
    assert exc.value.line().startswith(str(path))


@pytest.mark.parametrize("config, match", [
    ({"size": "tiny", "chanels": 8}, "chanels: Extra inputs are not permitted"),
    ({"size": "huge"}, "size"),
    ({"size": "tiny", "layers": "two"}, "layers"),
    ({"size": "tiny", "channels": 10, "heads": 4}, "multiple of heads"),
])
def test_bad_config_is_a_one_line_error(config: dict, match: str) -> None:
    with pytest.raises(BuilderError, match=match) as exc:
        build_model({"builder": "reference", "config": config})
    assert "\n" not in exc.value.line() and "invalid config" in exc.value.line()


def test_model_spec_of_a_plain_module_is_an_error() -> None:
    with pytest.raises(BuilderError, match="not built by a model builder"):
        model_spec(torch.nn.Linear(1, 1))


# --- the reference model -------------------------------------------------------------------------

@pytest.mark.parametrize("size", list(PRESETS))
def test_every_preset_builds(size: str) -> None:
    # On the meta device: shapes and counts without allocating (aifs-like is ~200M parameters).
    with torch.device("meta"):
        m = build_model({"builder": "reference", "config": {"size": size}})
    n = sum(p.numel() for p in m.parameters())
    assert n == count_parameters({"size": size})
    if size == "aifs-like":
        assert n > 200_000_000 and m.reference_config["channels"] == 1024
        assert len(m.processor.proc) == 16


def test_small_forward_and_overrides() -> None:
    torch.manual_seed(0)
    m = build_model({"builder": "reference", "config": {"size": "small", "layers": 1, "n_vars": 3}})
    assert m(torch.randn(2, 16 * 32, 3)).shape == (2, 512, 3)
    with pytest.raises(ValueError, match=r"expected input \[batch, 512, 3\]"):
        m(torch.randn(2, 100, 3))


def test_module_names_are_anemoi_s() -> None:
    keys = set(tiny().state_dict())
    block = re.compile(r"processor\.proc\.\d+\.(attention\.(lin_[qkv]\.weight|projection\.(weight|bias))"
                       r"|layer_norm_(attention|mlp)\.(weight|bias)|mlp\.mlp\.[02]\.(weight|bias))")
    others = {k for k in keys if not block.fullmatch(k)}
    assert others == {"grid_features", "encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}
    assert "processor.proc.1.attention.lin_q.weight" in keys and "processor.proc.0.mlp.mlp.2.bias" in keys
    assert not any(re.search(r"lin_[qkv]\.bias", k) for k in keys)  # no q/k/v bias, as anemoi
    assert len(keys) == 5 + 2 * 13


def test_the_prediction_is_residual() -> None:
    m = tiny()
    with torch.no_grad():
        m.decoder.weight.zero_()
        m.decoder.bias.zero_()
    x = torch.randn(1, m.grid_size, m.n_vars)
    assert torch.equal(m(x), x)


def test_core_modules_import_without_lightning_or_peft() -> None:
    code = ("import anemoi_ckpt.builders, anemoi_ckpt.models.reference, anemoi_ckpt.trainer, "
            "anemoi_ckpt.trainer.data, sys; "
            "print([m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'peft')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the synthetic dataset -----------------------------------------------------------------------

def test_dataset_shapes_finite_and_normalised() -> None:
    ds = SyntheticWeather(128, seed=1, n_lat=8, n_lon=16, n_vars=4)
    assert len(ds) == 128
    x, y = ds[5]
    assert x.shape == y.shape == (128, 4) and x.dtype == y.dtype == torch.float32
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.isfinite(xs).all()
    assert 0.7 < xs.std().item() < 1.3 and abs(xs.mean().item()) < 0.2
    assert not torch.equal(x, y)  # the state evolves
    with pytest.raises(IndexError):
        ds[128]


def test_dataset_is_deterministic() -> None:
    a = SyntheticWeather(100, seed=4, variant="regional")
    b = SyntheticWeather(70, seed=4, variant="regional")  # item i does not depend on n_samples
    for i in (0, 3, 65, 69):
        assert all(torch.equal(u, v) for u, v in zip(a[i], b[i]))
    c = SyntheticWeather(100, seed=5, variant="regional")
    assert not torch.equal(a[0][0], c[0][0])
    a[1][0].add_(1.0)  # samples are copies: changing one does not change the dataset
    assert torch.equal(a[1][0], b[1][0])


def test_regional_dynamics_differ_from_global() -> None:
    g = SyntheticWeather(64, seed=0, variant="global")
    r = SyntheticWeather(64, seed=0, variant="regional")
    xg, yg = (torch.stack(t) for t in zip(*(g[i] for i in range(64))))
    xr, yr = (torch.stack(t) for t in zip(*(r[i] for i in range(64))))
    assert not torch.allclose(xg, xr)
    # The tendencies differ in size and in the localised patch (the oscillation at 40N, 90E).
    assert (yr - xr).pow(2).mean() > 1.5 * (yg - xg).pow(2).mean()
    with pytest.raises(ValueError, match="variant"):
        SyntheticWeather(4, variant="polar")  # type: ignore[arg-type]


def test_dataset_describe_and_for_model() -> None:
    ds = SyntheticWeather.for_model({"size": "small"}, n_samples=8, seed=2, variant="regional")
    assert ds.describe() == {"name": "synthetic-weather", "version": 1, "variant": "regional",
                             "grid": [16, 32], "n_vars": 8, "n_samples": 8, "seed": 2}
    model = build_model({"builder": "reference", "config": {"size": "small", "layers": 1}})
    x, y = ds[0]
    assert model(x[None]).shape == y[None].shape
