"""Training windows from a real anemoi-datasets dataset, checked against the base model's data.

``data.dataset`` is what anemoi-datasets' ``open_dataset`` accepts (a path, a URL or a dict of its
options) and ``start``/``end`` restrict it, inclusive, with anemoi-datasets' meaning ("2020-02" is
the whole month). :class:`AnemoiWindows` serves sample ``i`` as the raw float32 values, shape
(time, ensemble, grid, variables), of the dates ``t - (multistep_input - 1) * timestep ... t +
rollout * multistep_output * timestep``: the offsets anemoi-training's ``Forecaster`` reads. The
variables are selected by name in the model's order (its ``name_to_index``), so a dataset that
stores them in another order, or has more, still feeds the model correctly.

Everything that would make training meaningless is refused before training, each with one line
(:class:`ConfigError` naming the dataset): a variable missing, another grid, another frequency,
dates outside the dataset, a period too short for one window, overlapping training and validation
periods. anemoi-datasets is imported only when a dataset is opened, so a configuration can be
validated without it.
"""

from __future__ import annotations

import calendar
import datetime
import json
from typing import Any, Mapping

import numpy as np
import torch

from ..config import ConfigError
from .info import ModelData, frequency_string

_INSTALL = "install anemoi-datasets (pip install anemoi-ckpt[anemoi] anemoi-datasets)"
_TINY = datetime.timedelta(microseconds=1)


# ---------------------------------------------------------------- pure date arithmetic

def date_interval(value: Any) -> tuple[datetime.datetime, datetime.datetime]:
    """The instants a ``start``/``end`` value covers, as anemoi-datasets reads it: a year
    (``2020``), a month (``2020-02``, ``202002``), a day (``2020-02-14``, ``20200214``, a
    ``datetime.date``) spans the whole period; a date and time is one instant. ValueError otherwise."""
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None), value.replace(tzinfo=None)
    if isinstance(value, np.datetime64):
        d = value.astype("datetime64[us]").astype(datetime.datetime)
        return d, d
    if isinstance(value, datetime.date):
        value = value.strftime("%Y%m%d")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"not a date: {value!r}")
    text = value.strip()
    if ":" in text:
        try:
            d = datetime.datetime.fromisoformat(text.replace("Z", ""))
        except ValueError:
            raise ValueError(f"not a date: {value!r}") from None
        return d.replace(tzinfo=None), d.replace(tzinfo=None)
    digits = text.replace("-", "")
    parts = text.split("-")
    if not digits.isdigit() or len(digits) not in (4, 6, 8) or any(not p for p in parts):
        raise ValueError(f"not a date: {value!r} (give YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)")
    y = int(digits[:4])
    try:
        if len(digits) == 4:
            return datetime.datetime(y, 1, 1), datetime.datetime(y + 1, 1, 1) - _TINY
        m = int(digits[4:6])
        if len(digits) == 6:
            last_day = calendar.monthrange(y, m)[1]
            return datetime.datetime(y, m, 1), datetime.datetime(y, m, last_day) + datetime.timedelta(days=1) - _TINY
        d = datetime.datetime(y, m, int(digits[6:8]))
    except ValueError:
        raise ValueError(f"not a date: {value!r}") from None
    return d, d + datetime.timedelta(days=1) - _TINY


def overlaps(a: tuple[datetime.datetime, datetime.datetime],
             b: tuple[datetime.datetime, datetime.datetime]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def window_offsets(model: ModelData, rollout: int) -> np.ndarray:
    """Dataset-index offsets of one window from its first date: the inputs, then every output."""
    n = model.multistep_input + rollout * model.multistep_output
    return np.arange(n) * model.stride


def window_starts(n_dates: int, offsets: np.ndarray, missing: set[int]) -> np.ndarray:
    """First indices of every complete window that touches no missing date."""
    span = int(offsets[-1])
    starts = [j for j in range(max(0, n_dates - span))
              if not missing or not any(int(j + o) in missing for o in offsets)]
    return np.asarray(starts, dtype=np.int64)


def _iso(d: Any) -> str:
    return str(np.datetime64(d, "s"))


def spec_label(spec: Any) -> str:
    """How a dataset is named in messages: its path/URL, or the dict's ``dataset`` entry."""
    if isinstance(spec, Mapping) and isinstance(spec.get("dataset"), str):
        return spec["dataset"]
    return spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True, default=str)


def _check_spec(spec: Any) -> None:
    if isinstance(spec, str) and spec.strip():
        return
    if isinstance(spec, Mapping) and spec:
        inner = {"start", "end"} & set(spec)
        if inner:
            raise ConfigError(None, f"data.dataset holds {', '.join(sorted(inner))}",
                              "give the period as data.start / data.end")
        return
    raise ConfigError(None, f"data.dataset must be a path, a URL or a dict of open_dataset options, "
                      f"not {spec!r}")


def _open(spec: Any, label: str, **kwargs: Any) -> Any:
    try:
        from anemoi.datasets import open_dataset
    except ImportError:
        raise ConfigError(None, "reading data.dataset needs anemoi-datasets, which is not installed",
                          _INSTALL) from None
    try:
        return open_dataset(spec, **kwargs)
    except Exception as e:  # anemoi-datasets raises anything from ValueError to AssertionError
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(label, f"anemoi-datasets cannot open it{' for ' + str(kwargs) if kwargs else ''}"
                          f": {type(e).__name__}{': ' + text if text else ''}") from None


def _anemoi_datasets_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("anemoi-datasets")
    except PackageNotFoundError:
        import anemoi.datasets

        return str(anemoi.datasets.__version__)


# ---------------------------------------------------------------- the dataset

class AnemoiWindows(torch.utils.data.Dataset):
    """Windows of raw values, (time, ensemble, grid, variables) float32, in the model's order."""

    def __init__(self, spec: str | Mapping[str, Any], model: ModelData, *, start: Any = None,
                 end: Any = None, rollout: int = 1, key: str = "data") -> None:
        _check_spec(spec)
        if not isinstance(rollout, int) or rollout < 1:
            raise ConfigError(None, f"rollout must be a positive integer, not {rollout!r}")
        self.spec, self.model, self.rollout, self.key = spec, model, rollout, key
        self.start, self.end = start, end
        self.label = spec_label(spec)
        full = _open(spec, self.label)
        self._check_content(full)
        self.period = self._period(full)
        self._ds = _open(full, self.label, start=start, end=end) if (start, end) != (None, None) else full
        self._offsets = window_offsets(model, rollout)
        self._starts = window_starts(len(self._ds), self._offsets, set(self._ds.missing or ()))
        if not len(self._starts):
            raise ConfigError(self.label, f"{key}: the period {self._span()} holds "
                              f"{len(self._ds)} date{'s' if len(self._ds) != 1 else ''}, too few for one window of "
                              f"{len(self._offsets)} steps {frequency_string(model.timestep)} apart",
                              "give a longer period")
        n2i = self._ds.name_to_index
        self._columns = np.asarray([n2i[v] for v in model.variables], dtype=np.int64)

    # -- checks, each one line naming the dataset and both values
    def _check_content(self, ds: Any) -> None:
        m, src = self.model, self.model.source or "the base model"
        missing = [v for v in m.variables if v not in ds.name_to_index]
        if missing:
            raise ConfigError(self.label, f"lacks variables {', '.join(missing)} that {src} reads "
                              f"(it has {', '.join(ds.variables)})")
        if ds.shape[-1] != m.grid_size:
            raise ConfigError(self.label, f"has a grid of {ds.shape[-1]} points, {src} was trained "
                              f"on {m.grid_size}")
        if ds.frequency != m.frequency:
            finer = ds.frequency < m.frequency and not m.frequency % ds.frequency
            raise ConfigError(self.label, f"has a frequency of {frequency_string(ds.frequency)}, "
                              f"{src} was trained at {frequency_string(m.frequency)}",
                              f"subsample it: data.dataset: {{dataset: ..., frequency: "
                              f"{frequency_string(m.frequency)}}}" if finer else None)
        if m.latitudes is not None and m.longitudes is not None:
            dlat = np.abs(np.asarray(ds.latitudes, float) - np.asarray(m.latitudes))
            dlon = np.abs((np.asarray(ds.longitudes, float) - np.asarray(m.longitudes) + 180) % 360 - 180)
            if max(dlat.max(), dlon.max()) > 1e-3:
                raise ConfigError(self.label, f"has {m.grid_size} grid points like {src} but at other "
                                  f"coordinates (up to {max(dlat.max(), dlon.max()):.3g} degrees off)")

    def _period(self, full: Any) -> tuple[datetime.datetime, datetime.datetime]:
        """The instants asked for, refused if the dataset does not cover them."""
        first = np.datetime64(full.dates[0], "us").astype(datetime.datetime)
        last = np.datetime64(full.dates[-1], "us").astype(datetime.datetime)
        have = f"the dataset has {_iso(full.dates[0])} to {_iso(full.dates[-1])}"
        lo, hi = first, last
        for name, value in (("start", self.start), ("end", self.end)):
            if value is None:
                continue
            try:
                a, b = date_interval(value)
            except ValueError as e:
                raise ConfigError(None, f"{self.key}.{name}: {e}") from None
            if a < first or b >= last + full.frequency:
                raise ConfigError(self.label, f"{self.key}.{name} {value} is outside the dataset "
                                  f"({have})")
            lo, hi = (a, hi) if name == "start" else (lo, b)
        if lo > hi:
            raise ConfigError(None, f"{self.key}: start {self.start} is after end {self.end}")
        return lo, hi

    def _span(self) -> str:
        return f"{self.start if self.start is not None else 'first date'} .. " \
               f"{self.end if self.end is not None else 'last date'}"

    # -- torch Dataset
    def __len__(self) -> int:
        return len(self._starts)

    def indices(self, i: int) -> np.ndarray:
        """Indices into the opened (period-restricted) dataset of window ``i``'s dates."""
        return int(self._starts[i]) + self._offsets

    def dates(self, i: int) -> list[str]:
        return [_iso(self._ds.dates[k]) for k in self.indices(i)]

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        idx = self.indices(i % len(self))
        raw = self._ds[int(idx[0]): int(idx[-1]) + 1: self.model.stride]  # (T, V_ds, E, G)
        values = np.asarray(raw)[:, self._columns]  # by name, in the model's order
        return torch.from_numpy(np.ascontiguousarray(values.transpose(0, 2, 3, 1), dtype=np.float32))

    # -- lineage
    def describe(self) -> dict[str, Any]:
        """What was read, as JSON, for the lineage record."""
        out: dict[str, Any] = {
            "dataset": json.loads(json.dumps(self.spec, default=str)),
            "start": None if self.start is None else str(self.start),
            "end": None if self.end is None else str(self.end),
            "first_date": _iso(self._ds.dates[0]), "last_date": _iso(self._ds.dates[-1]),
            "first_window": self.dates(0), "last_window": self.dates(len(self) - 1),
            "n_samples": len(self), "frequency": frequency_string(self._ds.frequency),
            "timestep": frequency_string(self.model.timestep), "rollout": self.rollout,
            "multistep_input": self.model.multistep_input, "variables": list(self.model.variables),
            "grid_size": int(self._ds.shape[-1]), "ensembles": int(self._ds.shape[2]),
            "anemoi_datasets_version": _anemoi_datasets_version(),
        }
        uuids, names = _identities(self._ds)
        if uuids:
            out["uuid"] = uuids[0] if len(uuids) == 1 else uuids
        if names:
            out["name"] = names[0] if len(names) == 1 else names
        return out


def _identities(ds: Any) -> tuple[list[str], list[str]]:
    """The uuids and names the zarr stores record (several when datasets are combined)."""
    uuids: list[str] = []
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            attrs = node.get("attrs")
            if isinstance(attrs, Mapping):
                for key, acc in (("uuid", uuids), ("name", names)):
                    if isinstance(attrs.get(key), str) and attrs[key] not in acc:
                        acc.append(attrs[key])
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    try:
        md = ds.metadata()
    except Exception:  # identity is informative only; never fail a run over it
        return [], []
    walk(md.get("specific"))
    if isinstance(md.get("name"), str) and md["name"] not in names:
        names.insert(0, md["name"])
    return uuids, names


def train_and_validation(spec: str | Mapping[str, Any], model: ModelData, *, start: Any, end: Any,
                         validation: Mapping[str, Any] | None, rollout: int = 1,
                         ) -> tuple[AnemoiWindows, AnemoiWindows | None]:
    """The training windows of ``start..end`` and, with ``validation: {start, end}``, the held-out
    windows of that period; the periods may not share an instant."""
    train = AnemoiWindows(spec, model, start=start, end=end, rollout=rollout, key="data")
    if validation is None:
        return train, None
    if not isinstance(validation, Mapping) or set(validation) - {"start", "end"}:
        raise ConfigError(None, f"data.validation must be {{start, end}}, not {validation!r}")
    val = AnemoiWindows(spec, model, start=validation.get("start"), end=validation.get("end"),
                        rollout=rollout, key="data.validation")
    if overlaps(train.period, val.period):
        raise ConfigError(None, f"the validation period {val._span()} overlaps the training period "
                          f"{train._span()}", "held-out dates must not be trained on")
    return train, val
