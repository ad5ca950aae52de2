"""What a base ``.anc`` says about the data its model was trained on (:class:`ModelData`).

Everything the fine-tuning data must agree with comes from the file's own anemoi metadata, never
from the trainer's configuration: the variables and their order (the ``name_to_index`` anemoi-models
indexes the data tensor with), the grid, the dataset frequency, the model time step and the number
of input and output steps. Pure reading of a JSON-like dict; nothing from anemoi is imported.

Where the facts live (anemoi-training 0.17 / anemoi-models 0.19; older layouts as translated by
``anemoi-ckpt convert``):

- ``data_indices.<dataset>.data.input.name_to_index``: every variable of the dataset as opened at
  training time (``open_dataset(...).name_to_index``: prognostic, diagnostic and forcing alike), by
  position in the data tensor's last axis;
- ``config.data.frequency``: the dataset frequency (``open_dataset(frequency=...)``);
- ``config.task.{timestep,multistep_input,multistep_output}`` (older: ``config.data.timestep`` and
  ``config.training.multistep_*``; last resort ``metadata_inference.data.timesteps``);
- the grid: the ``latitudes`` supporting array of the dataset, else the ``dataset.<name>.shape``
  recorded by anemoi-datasets (dates, variables, ensembles, grid points).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ...errors import FormatError

_FREQ = re.compile(r"^\s*(\d+)\s*([smhdSMHD]?)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 3600}


def parse_frequency(value: Any) -> datetime.timedelta:
    """``6h``, ``6H``, ``1d``, ``30m``, ``PT6H``, an int (hours) or a timedelta -> timedelta.

    The forms anemoi-utils' ``frequency_to_timedelta`` accepts for the periods anemoi uses; raises
    ValueError on anything else (callers turn it into one line naming the file and key)."""
    if isinstance(value, datetime.timedelta):
        td = value
    elif isinstance(value, int) and not isinstance(value, bool):
        td = datetime.timedelta(hours=value)
    elif isinstance(value, str):
        m = _FREQ.match(value)
        iso = re.match(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$", value.strip().upper())
        if m:
            td = datetime.timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()])
        elif iso and any(iso.groups()):
            d, h, mi, s = (int(g or 0) for g in iso.groups())
            td = datetime.timedelta(days=d, hours=h, minutes=mi, seconds=s)
        else:
            raise ValueError(f"not a frequency: {value!r}")
    else:
        raise ValueError(f"not a frequency: {value!r}")
    if td <= datetime.timedelta(0):
        raise ValueError(f"not a positive frequency: {value!r}")
    return td


def frequency_string(td: datetime.timedelta) -> str:
    """The shortest of ``Nd``/``Nh``/``Nm``/``Ns`` for a timedelta (anemoi's own spelling)."""
    seconds = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class ModelData:
    """The data contract of a trained anemoi model, read from its metadata."""

    source: str | None            #: the file it was read from (for messages)
    dataset: str                  #: the dataset name in the metadata (anemoi-training's "data")
    variables: tuple[str, ...]    #: the data tensor's variables, in the model's order
    grid_size: int
    frequency: datetime.timedelta  #: of the dataset the model was trained on
    timestep: datetime.timedelta   #: between the model's input/output steps (k * frequency)
    multistep_input: int
    multistep_output: int
    #: grid coordinates when the file has them (degrees), for a same-size-other-grid check
    latitudes: tuple[float, ...] | None = field(default=None, repr=False)
    longitudes: tuple[float, ...] | None = field(default=None, repr=False)
    #: the dataset section recorded at training time (what was opened, its uuid...), if any
    training_dataset: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def name_to_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.variables)}

    @property
    def stride(self) -> int:
        """Dataset steps per model time step."""
        return self.timestep // self.frequency

    @classmethod
    def from_metadata(cls, md: Any, source: str | os.PathLike | None = None,
                      supporting_arrays: Mapping[str, Any] | None = None) -> "ModelData":
        return _read(md, os.fspath(source) if source is not None else None, supporting_arrays or {})

    @classmethod
    def from_anc(cls, path: str | os.PathLike) -> "ModelData":
        """Read an ``.anc``'s anemoi metadata and supporting arrays (no weights are loaded)."""
        import anemoi_ckpt

        with anemoi_ckpt.open(path) as ck:
            md = ck.anemoi_metadata
            if md is None:
                raise FormatError(path, "has no anemoi metadata, so its data contract is unknown",
                                  "fine-tune an anemoi model converted with anemoi-ckpt convert")
            arrays = ck.supporting_arrays
            return _read(md, os.fspath(path), arrays)


def _fail(source: str | None, what: str, hint: str | None = None) -> FormatError:
    return FormatError(source, f"anemoi metadata: {what}", hint)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _dataset_name(md: Mapping[str, Any], src: str | None) -> tuple[str, Mapping[str, Any]]:
    """The single dataset and its index collection (``data``/``model`` sections)."""
    di = md.get("data_indices")
    if not isinstance(di, Mapping) or not di:
        raise _fail(src, "no data_indices")
    if "model" in di and isinstance(di.get("data"), Mapping) and "input" in di["data"]:
        return "data", di  # the single-dataset layout before anemoi-models 0.9
    names = sorted(di)
    if len(names) != 1:
        raise _fail(src, f"the model reads {len(names)} datasets ({', '.join(names)}); fine-tuning "
                    "supports one", "fine-tune a single-dataset model")
    return names[0], di[names[0]]


def _variables(collection: Any, name: str, src: str | None) -> tuple[str, ...]:
    n2i = _get(collection, "data", "input", "name_to_index")
    if not isinstance(n2i, Mapping) or not n2i:
        raise _fail(src, f"no data_indices.{name}.data.input.name_to_index")
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in n2i.items()) \
            or sorted(n2i.values()) != list(range(len(n2i))):
        raise _fail(src, f"data_indices.{name}.data.input.name_to_index is not a permutation of "
                    f"0..{len(n2i) - 1}")
    return tuple(sorted(n2i, key=n2i.__getitem__))


def _coords(arrays: Mapping[str, Any], name: str) -> tuple[Any, Any]:
    own = arrays.get(name) if isinstance(arrays.get(name), Mapping) else arrays
    return own.get("latitudes"), own.get("longitudes")


def _grid(md: Mapping[str, Any], arrays: Mapping[str, Any], name: str, src: str | None) -> int:
    lat, _ = _coords(arrays, name)
    ds = _get(md, "dataset", name)
    if not isinstance(ds, Mapping) or "shape" not in ds:
        ds = md.get("dataset")  # single-dataset layout
    shape = ds.get("shape") if isinstance(ds, Mapping) else None
    recorded = int(shape[-1]) if isinstance(shape, (list, tuple)) and shape else None
    if lat is not None:
        n = int(len(lat))
        if recorded is not None and recorded != n:
            raise _fail(src, f"the latitudes supporting array has {n} points but the dataset "
                        f"shape says {recorded}")
        return n
    if recorded is None:
        raise _fail(src, f"neither a latitudes supporting array nor dataset.{name}.shape: the grid "
                    "size is unknown")
    return recorded


def _period(value: Any, key: str, src: str | None) -> datetime.timedelta:
    try:
        return parse_frequency(value)
    except ValueError as e:
        raise _fail(src, f"{key}: {e}") from None


def _steps(cfg: Mapping[str, Any], md: Mapping[str, Any], src: str | None) -> tuple[Any, int, int]:
    """(timestep value, multistep_input, multistep_output) from wherever this release put them."""
    task, training, data = (cfg.get(k) or {} for k in ("task", "training", "data"))
    ts = _get(md, "metadata_inference", "data", "timesteps") or {}
    timestep = task.get("timestep") or data.get("timestep") or ts.get("timestep")
    for sec in (task, training):
        if sec.get("multistep_input") is not None:
            mi, mo = sec.get("multistep_input"), sec.get("multistep_output") or 1
            break
    else:
        inputs, outputs = ts.get("input_relative_date_indices"), ts.get("output_relative_date_indices")
        if not inputs:
            raise _fail(src, "no multistep_input in config.task or config.training")
        mi, mo = len(inputs), len(outputs or [1])
    if timestep is None:
        raise _fail(src, "no timestep in config.task, config.data or metadata_inference")
    if not (isinstance(mi, int) and isinstance(mo, int) and mi >= 1 and mo >= 1):
        raise _fail(src, f"multistep_input {mi!r} / multistep_output {mo!r} are not positive integers")
    return timestep, mi, mo


def _read(md: Any, src: str | None, arrays: Mapping[str, Any]) -> ModelData:
    if not isinstance(md, Mapping):
        raise _fail(src, "not a JSON object")
    cfg = md.get("config")
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("data"), Mapping):
        raise _fail(src, "no resolved training config (config.data)",
                    "convert the checkpoint with a recent anemoi-ckpt")
    name, collection = _dataset_name(md, src)
    variables = _variables(collection, name, src)
    grid = _grid(md, arrays, name, src)
    freq_value = cfg["data"].get("frequency") or _get(md, "dataset", name, "frequency")
    if freq_value is None:
        raise _fail(src, "no config.data.frequency")
    frequency = _period(freq_value, "config.data.frequency", src)
    ts_value, mi, mo = _steps(cfg, md, src)
    timestep = _period(ts_value, "timestep", src)
    if timestep % frequency:
        raise _fail(src, f"the time step {frequency_string(timestep)} is not a multiple of the "
                    f"dataset frequency {frequency_string(frequency)}")
    lat, lon = _coords(arrays, name)
    ds = _get(md, "dataset", name)
    return ModelData(
        source=src, dataset=name, variables=variables, grid_size=grid, frequency=frequency,
        timestep=timestep, multistep_input=mi, multistep_output=mo,
        latitudes=tuple(float(x) for x in lat) if lat is not None else None,
        longitudes=tuple(float(x) for x in lon) if lon is not None else None,
        training_dataset=ds if isinstance(ds, Mapping) else None)
