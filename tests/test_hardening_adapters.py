"""Hardening (issue 16, item 9): every number an adapter config (or the merge options) feeds into
the arithmetic of ``merge`` is checked, and a merge whose result is non-finite where the inputs
were finite is refused. Built inputs: real adapter ``.anc`` files on disk with crafted
``peft_config`` values (NaN, infinities, ``1e999``, huge integers, booleans, strings), crafted
DoRA magnitudes and overflowing scales/weights. Outcome: the correct merge, or one line naming
the adapter file and the key, exit non-zero, nothing written."""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import anemoi_ckpt
import anemoi_ckpt.writer as writer_mod
from anemoi_ckpt.adapters import merge
from anemoi_ckpt.adapters.lora_config import MAX_ALPHA, MAX_RANK
from anemoi_ckpt.errors import FormatError, UsageError

from conftest import one_error_line, run_cli

OUT, IN, R = 4, 3, 2
MODULE = "lin"
KA, KB = f"base_model.model.{MODULE}.lora_A.weight", f"base_model.model.{MODULE}.lora_B.weight"
KM = f"base_model.model.{MODULE}.lora_magnitude_vector"
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


#: JSON literals a crafted metadata.json can hold (Python's json reads them as nan/inf; pydantic's
#: dump would turn a float NaN into null, so they are spliced in as text)
_LITERALS = {float("nan"): b"NaN", float("inf"): b"Infinity", float("-inf"): b"-Infinity"}


def _token(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return f"@@{_LITERALS[value] if value in _LITERALS else b'NaN'!r}@@"
    return value


@contextlib.contextmanager
def _nan_json() -> Iterator[None]:
    """Let the writer put NaN/Infinity into metadata.json, as a crafted file can (the reader's
    JSON accepts them): only to BUILD the hostile input, never while merging."""
    orig = writer_mod._json_bytes

    def raw(obj: Any, allow_nan: bool = False) -> bytes:
        data = orig(obj, allow_nan=allow_nan)
        for lit in (b"NaN", b"Infinity", b"-Infinity"):
            data = data.replace(b'"@@' + repr(lit).encode() + b'@@"', lit)
        return data

    writer_mod._json_bytes = raw  # type: ignore[assignment]
    try:
        yield
    finally:
        writer_mod._json_bytes = orig  # type: ignore[assignment]


def _splice(cfg: Any) -> Any:
    if isinstance(cfg, dict):
        return {k: _splice(v) for k, v in cfg.items()}
    return _token(cfg)


def _base(d: Path, dtype: torch.dtype = torch.float32, weight: torch.Tensor | None = None) -> Path:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(OUT, IN, generator=g) if weight is None else weight
    path = d / "base.anc"
    anemoi_ckpt.save(path, {f"{MODULE}.weight": w.to(dtype), f"{MODULE}.bias": torch.zeros(OUT, dtype=dtype)})
    return path


def _adapter(d: Path, base: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None,
             name: str = "lora") -> Path:
    g = torch.Generator().manual_seed(1)
    r = cfg.get("r") if isinstance(cfg.get("r"), int) and 0 < cfg.get("r") < 64 else R
    t = tensors if tensors is not None else {KA: torch.randn(r, IN, generator=g),
                                              KB: torch.randn(OUT, r, generator=g)}
    out = d / f"{name}.anc"
    with anemoi_ckpt.open(base) as bk:
        info = {"name": name, "base_content_id": bk.content_id, "base_uuid": bk.uuid}
    with _nan_json():
        anemoi_ckpt.save(out, t, kind="adapter", metadata={"peft_config": _splice(cfg), "adapter": info})
    if _non_finite(cfg):  # the reader refuses NaN/Infinity in metadata.json (strict JSON)
        with pytest.raises(FormatError, match="strict JSON"):
            with anemoi_ckpt.open(out) as ck:
                ck.metadata  # noqa: B018
        return out
    with anemoi_ckpt.open(out) as ck:  # the crafted value reads back as itself
        got = ck.metadata.model_extra["peft_config"]
        assert repr(got) == repr(cfg), (got, cfg)
    return out


def _non_finite(cfg: Any) -> bool:
    if isinstance(cfg, dict):
        return any(_non_finite(v) for v in cfg.values())
    return isinstance(cfg, float) and not math.isfinite(cfg)


def _cfg(**kw: Any) -> dict[str, Any]:
    return {"peft_type": "LORA", "r": R, "lora_alpha": 4, "target_modules": [MODULE], **kw}


def _expected(base: Path, adapter: Path, scale: float) -> torch.Tensor:
    with anemoi_ckpt.open(base) as bk, anemoi_ckpt.open(adapter) as ak:
        W = bk.tensors()[f"{MODULE}.weight"].float()
        return W + scale * (ak.tensors()[KB].float() @ ak.tensors()[KA].float())


def _merge_bounded(d: Path, base: Path, adapter: Path, key: str, **kw: Any) -> Path | None:
    """merge: either a finite output, or a FormatError naming the adapter and ``key`` with
    nothing written."""
    out = d / "out.anc"
    out.unlink(missing_ok=True)
    try:
        merge(base, [adapter], out, durable=False, **kw)
    except FormatError as e:
        line = e.line()
        # NaN and infinity never reach the arithmetic: the reader already refuses them in the
        # adapter's metadata.json (strict JSON, docs/format.md 4.2), naming that file
        assert "\n" not in line and str(adapter) in line and (key in line or "strict JSON" in line), line
        assert not out.exists() and not list(d.glob("*.tmp*")), list(d.iterdir())
        return None
    with anemoi_ckpt.open(out) as ck:
        for t in ck.tensors().values():
            assert torch.isfinite(t).all()
    return out


# JSON-representable hostile numbers, plus what the reader's JSON turns 1e999 / NaN into
_BAD_NUMBERS = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 0, 0.0, -1, -1e-300, True, False,
                     None, "8", "nan", [8], {"x": 8}, 10 ** 400, -(10 ** 400), 1e308, MAX_ALPHA * 2]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
)


@SETTINGS
@given(alpha=_BAD_NUMBERS)
def test_lora_alpha_any_number(alpha: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base = _base(d)
        adapter = _adapter(d, base, _cfg(lora_alpha=alpha))
        out = _merge_bounded(d, base, adapter, "lora_alpha")
        valid = (not isinstance(alpha, bool) and isinstance(alpha, (int, float))
                 and abs(alpha) < 1e300 and math.isfinite(float(alpha)) and 0 < alpha <= MAX_ALPHA)
        assert (out is not None) == valid, alpha
        if out is not None:
            with anemoi_ckpt.open(out) as ck:
                torch.testing.assert_close(ck.tensors()[f"{MODULE}.weight"],
                                           _expected(base, adapter, float(alpha) / R), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(key=st.sampled_from(["r", "rank_pattern", "alpha_pattern"]), value=_BAD_NUMBERS)
def test_rank_and_pattern_values(key: str, value: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base = _base(d)
        cfg = _cfg(**({key: value} if key == "r" else {key: {MODULE: value}}))
        adapter = _adapter(d, base, cfg)
        out = _merge_bounded(d, base, adapter, key)
        if key == "alpha_pattern":
            valid = (not isinstance(value, bool) and isinstance(value, (int, float)) and abs(value) < 1e300
                     and math.isfinite(float(value)) and 0 < value <= MAX_ALPHA)
        else:  # a rank must also match the tensors (rank 2): any other valid rank is refused too
            valid = value == R and not isinstance(value, bool) and isinstance(value, int)
        assert (out is not None) == valid, (key, value)


@pytest.mark.parametrize("flag", ["use_rslora", "use_dora", "fan_in_fan_out", "lora_bias"])
@pytest.mark.parametrize("value", ["false", "true", 1, 0.0, [], {"a": 1}])
def test_formula_flags_must_be_booleans(tmp_path: Path, flag: str, value: Any) -> None:
    base = _base(tmp_path)
    adapter = _adapter(tmp_path, base, _cfg(**{flag: value}))
    with pytest.raises(FormatError) as e:
        merge(base, [adapter], tmp_path / "out.anc", durable=False)
    assert str(adapter) in e.value.line() and flag in e.value.line()
    assert not (tmp_path / "out.anc").exists()


def test_values_just_past_the_bounds_are_refused(tmp_path: Path) -> None:
    base = _base(tmp_path)
    for key, value in (("lora_alpha", MAX_ALPHA * 2), ("r", MAX_RANK + 1)):
        adapter = _adapter(tmp_path, base, _cfg(**{key: value}), name=f"lora-{key}")
        assert _merge_bounded(tmp_path, base, adapter, key) is None, key
    adapter = _adapter(tmp_path, base, _cfg(lora_alpha=MAX_ALPHA), name="lora-max")
    assert _merge_bounded(tmp_path, base, adapter, "lora_alpha") is not None   # the bound itself is allowed


@SETTINGS
@given(exp=st.integers(min_value=0, max_value=40), dtype=st.sampled_from([torch.float16, torch.bfloat16,
                                                                        torch.float32]))
def test_result_overflowing_the_base_dtype_is_refused(exp: int, dtype: torch.dtype) -> None:
    """A finite alpha (within the bound) times large but finite LoRA tensors: the merged weight
    either fits the base dtype (written, finite) or is refused naming the adapter."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base = _base(d, dtype)
        big = float(10 ** exp)
        adapter = _adapter(d, base, _cfg(lora_alpha=MAX_ALPHA),
                           {KA: torch.full((R, IN), big), KB: torch.full((OUT, R), big)})
        finite = math.isfinite(float(torch.tensor(big * big * MAX_ALPHA / R * R * 1.01).to(dtype))) \
            and big * big * R * (MAX_ALPHA / R) < torch.finfo(torch.float32).max
        out = _merge_bounded(d, base, adapter, "non-finite")
        if finite:
            assert out is not None, (exp, dtype)


@SETTINGS
@given(weight=st.one_of(st.floats(min_value=-1e308, max_value=1e308), st.sampled_from([1e30, -1e38, 3e38])))
def test_absurd_merge_weight_is_refused_or_finite(weight: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base = _base(d)
        adapter = _adapter(d, base, _cfg())
        out = _merge_bounded(d, base, adapter, "non-finite", weights=[weight])
        if abs(weight) <= 1e3:  # an ordinary weight merges
            assert out is not None, weight


@pytest.mark.parametrize("weights", [[float("nan")], [float("inf")], ["1"], [True], [10 ** 400], [None]])
def test_non_numeric_weights_are_usage_errors(tmp_path: Path, weights: list[Any]) -> None:
    base = _base(tmp_path)
    adapter = _adapter(tmp_path, base, _cfg())
    with pytest.raises(UsageError, match="weights"):
        merge(base, [adapter], tmp_path / "out.anc", weights=weights, durable=False)


@pytest.mark.parametrize("kw", [dict(method="ties", density=float("nan")), dict(method="ties", density="0.5"),
                                dict(method="dare_ties", density=float("inf")), dict(method="svd", rank=1.5),
                                dict(method="svd", rank=True), dict(seed=1.5), dict(seed="0")])
def test_bad_density_rank_seed_are_usage_errors(tmp_path: Path, kw: dict[str, Any]) -> None:
    base = _base(tmp_path)
    adapter = _adapter(tmp_path, base, _cfg())
    with pytest.raises(UsageError):
        merge(base, [adapter], tmp_path / "out.anc", durable=False, **kw)
    assert not (tmp_path / "out.anc").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_dora_magnitude_and_lora_tensors_must_be_finite(tmp_path: Path, bad: float) -> None:
    base = _base(tmp_path)
    g = torch.Generator().manual_seed(2)
    good = {KA: torch.randn(R, IN, generator=g), KB: torch.randn(OUT, R, generator=g), KM: torch.ones(OUT)}
    for key in (KM, KA, KB):
        t = dict(good)
        t[key] = t[key].clone()
        t[key].view(-1)[1] = bad
        adapter = _adapter(tmp_path, base, _cfg(use_dora=True), t, name=f"dora{key[-12:].replace('.', '')}")
        with pytest.raises(FormatError) as e:
            merge(base, [adapter], tmp_path / "out.anc", durable=False)
        assert str(adapter) in e.value.line() and "non-finite" in e.value.line()
    assert not (tmp_path / "out.anc").exists()


def test_dora_zero_norm_row_is_refused(tmp_path: Path) -> None:
    """W + ΔW with an all-zero row: DoRA's m / ‖row‖ is 0/0 (finite inputs, NaN result)."""
    W = torch.randn(OUT, IN)
    W[0] = 0
    base = _base(tmp_path, weight=W)
    B = torch.randn(OUT, R)
    B[0] = 0
    adapter = _adapter(tmp_path, base, _cfg(use_dora=True),
                       {KA: torch.randn(R, IN), KB: B, KM: torch.ones(OUT)})
    with pytest.raises(FormatError, match="non-finite") as e:
        merge(base, [adapter], tmp_path / "out.anc", durable=False)
    assert str(adapter) in e.value.line() and "lin.weight" in e.value.line()
    assert not (tmp_path / "out.anc").exists()


def test_non_finite_base_is_carried_not_refused(tmp_path: Path) -> None:
    """The result check compares with the input: NaN already in the base stays where it was."""
    W = torch.randn(OUT, IN)
    W[1, 2] = float("nan")
    base = _base(tmp_path, weight=W)
    adapter = _adapter(tmp_path, base, _cfg())
    merge(base, [adapter], tmp_path / "out.anc", durable=False)
    with anemoi_ckpt.open(tmp_path / "out.anc") as ck:
        got = ck.tensors()[f"{MODULE}.weight"]
        assert torch.isnan(got[1, 2]) and torch.isfinite(got).sum() == OUT * IN - 1


@pytest.mark.parametrize("alpha,fragments", [(float("nan"), ("NaN", "strict JSON")),
                                             (float("inf"), ("Infinity", "strict JSON")),
                                             (1e300, ("lora_alpha", "1e+300"))])
def test_cli_one_line_naming_file_and_key(tmp_path: Path, alpha: float, fragments: tuple[str, str]) -> None:
    base = _base(tmp_path)
    adapter = _adapter(tmp_path, base, _cfg(lora_alpha=alpha))
    out = tmp_path / "out.anc"
    res = run_cli("merge", str(base), str(adapter), "-o", str(out))
    line = one_error_line(res, str(adapter), *fragments)
    assert line and not out.exists()


def test_finite_check_fast_path_is_exact() -> None:
    """The result check first sums the tensor (a finite sum proves every element finite); a sum
    that overflows on finite values falls back to the element scan and is not a refusal."""
    from anemoi_ckpt.adapters.merge import _first_new_nonfinite

    big = torch.full((8,), 3e38)  # every element finite, the fp32 sum is +inf
    assert _first_new_nonfinite(None, big) is None
    assert _first_new_nonfinite(big, big) is None
    bad = big.clone()
    bad[5] = float("nan")
    assert _first_new_nonfinite(None, bad) == 5
    assert _first_new_nonfinite(bad, bad) is None  # NaN already in the base is carried
    opposite = torch.tensor([3e38, 3e38, -3e38, -3e38, float("inf")])  # sum: inf - inf = NaN
    assert _first_new_nonfinite(None, opposite) == 4
    assert _first_new_nonfinite(None, torch.tensor([1.0, 2.0], dtype=torch.bfloat16)) is None
