"""anemoi metadata ``version`` 1.0 (single dataset) -> 2.0 (datasets keyed by name).

anemoi-training writes 2.0 since its multi-dataset release (0.9.0); anemoi-inference picks its
reader on ``"dataset_names" in md["metadata_inference"]`` and calls a legacy file's dataset
``"data"``. This upgrade does what the newer trainer would have written for that single dataset:

* ``dataset``, ``data_indices`` and ``supporting_arrays_paths`` are wrapped as ``{"data": ...}``;
* ``metadata_inference`` is synthesized, each field from the 1.0 content (see ``_synthesize``),
  omitting what 1.0 does not record (``base_seed``; ``shapes.grid`` is null as in the trainer);
* ``version`` becomes ``"2.0"``.

The step file ``translations/1205-metadata-v2.toml`` spells this out with generic operations;
only the synthesis, too structural for them, lives here. Pure: dict in, new dict out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

DATASET = "data"


def _get(node: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(p)
    return node


def _task(config: Any) -> str:
    """The trainer's ``task_type`` from the 1.0 config's ``training.model_task`` class path."""
    model_task = str(_get(config, "training", "model_task") or "")
    if "Interpolator" in model_task:
        return "time-interpolator"
    if "Autoencoder" in model_task:
        return "autoencoder"
    return "forecaster"  # GraphForecaster, GraphEnsForecaster, diffusion: all "forecaster"


def _relative_date_indices(config: Any) -> tuple[list[int], list[int], list[int]] | None:
    """(all, input, output) relative date indices as anemoi-training 0.9 computed them."""
    training = _get(config, "training") or {}
    explicit = _get(training, "explicit_times")
    if isinstance(explicit, Mapping):
        inputs, targets = list(explicit.get("input", [])), list(explicit.get("target", []))
        return sorted(set(inputs + targets)), inputs, targets
    multistep = _get(training, "multistep_input")
    if not isinstance(multistep, int):
        return None
    rollout = _get(training, "rollout") or {}
    value = rollout.get("start", 1) if isinstance(rollout, Mapping) else 1
    if isinstance(rollout, Mapping) and rollout.get("epoch_increment", 0) > 0 \
            and rollout.get("max") is not None:
        value = rollout["max"]
    n = multistep + max(int(value), 1)
    return list(range(n)), list(range(multistep)), list(range(multistep, n))


def _variable_types(data_input: Any) -> dict[str, list[str]] | None:
    """Index lists of ``data_indices.data.input`` turned into variable names, as the trainer does."""
    if not isinstance(data_input, Mapping) or not isinstance(data_input.get("name_to_index"), Mapping):
        return None
    index_to_name = {int(v): k for k, v in data_input["name_to_index"].items()}
    return {kind: [index_to_name[int(i)] for i in data_input.get(kind, []) if int(i) in index_to_name]
            for kind in ("forcing", "target", "prognostic", "diagnostic")}


def _synthesize(md: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata_inference`` for dataset "data", each field from its 1.0 source:

    =====================  ======================================================================
    seed, run_id           top-level ``seed``, ``run_id``
    dataset_names          ``["data"]`` (anemoi-inference's name for a legacy dataset)
    task                   ``config.training.model_task`` (Interpolator -> time-interpolator, ...)
    timesteps              ``config.training.{multistep_input, rollout, explicit_times}`` and
                           ``config.data.timestep``, computed as anemoi-training 0.9 did
    data_indices           ``data_indices.model.{input,output}.name_to_index``
    variable_types         ``data_indices.data.input.{forcing,target,prognostic,diagnostic}`` as names
    shapes                 variables: ``len(data_indices.data.input.full)``; input_timesteps:
                           ``multistep_input``; ensemble: ``config.training.ensemble_size_per_device``
                           (1 if absent); grid: null
    =====================  ======================================================================

    A field whose source is missing is left out rather than guessed."""
    config = md.get("config")
    indices = md.get("data_indices")
    ds: dict[str, Any] = {}
    dates = _relative_date_indices(config)
    timesteps: dict[str, Any] = {}
    if dates is not None:
        timesteps = {"relative_date_indices_training": dates[0],
                     "input_relative_date_indices": dates[1],
                     "output_relative_date_indices": dates[2]}
    if _get(config, "data", "timestep") is not None:
        timesteps["timestep"] = _get(config, "data", "timestep")
    if timesteps:
        ds["timesteps"] = timesteps
    model_in = _get(indices, "model", "input", "name_to_index")
    model_out = _get(indices, "model", "output", "name_to_index")
    if model_in is not None and model_out is not None:
        ds["data_indices"] = {"input": copy.deepcopy(model_in), "output": copy.deepcopy(model_out)}
    types = _variable_types(_get(indices, "data", "input"))
    if types is not None:
        ds["variable_types"] = types
    full = _get(indices, "data", "input", "full")
    multistep = _get(config, "training", "multistep_input")
    ensemble = _get(config, "training", "ensemble_size_per_device")
    ds["shapes"] = {"variables": len(full) if isinstance(full, list) else None,
                    "input_timesteps": multistep if isinstance(multistep, int) else None,
                    "ensemble": ensemble if isinstance(ensemble, int) else 1,
                    "grid": None}
    out: dict[str, Any] = {k: md[k] for k in ("seed", "run_id") if k in md}
    out.update({"dataset_names": [DATASET], "task": _task(config), DATASET: ds})
    return out


def _names_of(indices: Any, name_to_index: Mapping[str, int]) -> list[str] | None:
    """The names at ``indices`` (sorted), or None when they are not integers of the mapping."""
    index_to_name = {i: n for n, i in name_to_index.items()}
    if not isinstance(indices, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i in index_to_name for i in indices):
        return None
    return [index_to_name[i] for i in sorted(indices)]


def complete_data_indices(md: Mapping[str, Any]) -> dict[str, Any]:
    """``md`` with its 1.0 ``data_indices`` in the form anemoi-models' ``IndexCollection.todict()``
    has had since 0.12 (what 2.0 files record and what today's code rebuilds and compares):

    * ``name_to_index`` in each of ``{data,model}.{input,output}``, which 1.0 trainers did not write:
      ``data.*`` is the dataset's variable order (``dataset.variables``, the ``name_to_index`` the
      trainer built its collection from); ``model.input`` / ``model.output`` number, in that order,
      the variables at ``data.input.full`` / ``data.output.full`` (``IndexCollection``: forcing and
      prognostic in, prognostic and diagnostic out);
    * ``target: []`` where a list lacks it (releases before target variables had none);
    * ``internal_data`` / ``internal_model`` (anemoi-models <= 0.4 remapper bookkeeping) dropped:
      no later collection has them (the source metadata is carried verbatim).

    Where ``dataset.variables`` is missing, or the indices do not fit it, ``name_to_index`` is left
    out rather than guessed. Pure: dict in, new dict out."""
    out = copy.deepcopy(dict(md))
    indices = out.get("data_indices")
    if not isinstance(indices, dict) or not isinstance(indices.get("data"), Mapping) \
            or not isinstance(indices.get("model"), Mapping):
        return out
    for extra in ("internal_data", "internal_model"):
        indices.pop(extra, None)
    for part in ("data", "model"):
        for io in ("input", "output"):
            node = _get(indices, part, io)
            if isinstance(node, dict):
                node.setdefault("target", [])
    variables = _get(out, "dataset", "variables")
    if not isinstance(variables, list) or not variables:
        return out
    data_n2i = {str(v): i for i, v in enumerate(variables)}
    model_n2i = {}
    for io in ("input", "output"):
        names = _names_of(_get(indices, "data", io, "full"), data_n2i)
        if names is None:
            return out
        model_n2i[io] = {n: i for i, n in enumerate(names)}
    for io in ("input", "output"):
        for part, n2i in (("data", data_n2i), ("model", model_n2i[io])):
            node = indices[part].get(io)
            if isinstance(node, dict):  # a file without it is left as it is: load says which key
                node.setdefault("name_to_index", dict(n2i))
    return out


def synthesize_metadata_inference(md: Mapping[str, Any]) -> dict[str, Any]:
    """``md`` plus a ``metadata_inference`` built from its 1.0 content (kept if already there).

    Runs before the per-dataset keys are wrapped, so it reads them in their 1.0 places."""
    out = copy.deepcopy(dict(md))
    if "metadata_inference" not in out:
        out["metadata_inference"] = _synthesize(md)
    return out
