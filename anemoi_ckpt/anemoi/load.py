"""``load_model``: an ``AnemoiModelInterface`` from an ``.anc`` alone, no pickle.

The module tree is built by the installed anemoi-models from the resolved training configuration in
the anemoi metadata, exactly as anemoi-training builds it (``AnemoiModelInterface(config=...,
graph_data=..., statistics=..., data_indices=..., ...)``), then every persistent tensor is loaded
strictly from the ``weights`` section and the non-persistent buffers (the graph providers' sorted
edges and attributes) are set from the ``buffers`` section.

``graph_data``: a training-converted file has the ``HeteroData`` tensors in its ``graph`` section and
it is rebuilt from them. An inference-converted file has no ``HeteroData`` (the pickled interface
keeps one, but only its derived buffers are needed to run): a stand-in graph with the right node
counts, edge counts and edge attribute widths is made from the ``buffers`` section (each
``StaticGraphProvider``'s edges un-permuted), the module tree is built from it, and every buffer it
derived is then replaced by the file's exact tensor, so nothing computed from the stand-in survives.

Statistics: the normalisers' buffers are persistent, so neutral placeholders of the right length
are used at construction and overwritten by the strict ``load_state_dict``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from typing import Any, Iterator

from packaging.version import InvalidVersion, Version

from ..errors import AncError, FormatError
from . import hydra_shim
from .graph import graph_from_buffers, graph_from_section
from ..translate.steps import load_steps
from .fixups import run_load_ops
from .pages import track_file_pages
from .layout import mismatch_hint, steps_up_to, to_installed

LOG = logging.getLogger(__name__)

_INSTALL = "install anemoi-ckpt[anemoi] (anemoi-models, torch-geometric)"


class _NoTritonNotice(logging.Filter):
    """anemoi-models warns, once per GraphTransformer block it builds, that triton is unavailable
    and it falls back to the pyg backend: on a CPU that is the expected backend, and the notice
    (unformatted, straight to stderr without a logging setup) would bury a command's own output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triton is not available" not in record.getMessage()


def _require_anemoi() -> None:
    # Hydra is only needed to instantiate the resolved config: without it, a pure-Python stand-in
    # (hydra_shim) is registered before anemoi-models is first imported.
    hydra_shim.install()
    block_log = logging.getLogger("anemoi.models.layers.block")
    if not any(isinstance(f, _NoTritonNotice) for f in block_log.filters):
        block_log.addFilter(_NoTritonNotice())
    try:
        import anemoi.models  # noqa: F401
        import torch_geometric  # noqa: F401
    except ImportError as e:
        raise AncError(None, f"loading an anemoi model needs anemoi-models ({e.name} is not "
                       "installed)", _INSTALL) from None


def _config(md: dict[str, Any], path: str) -> Any:
    from omegaconf import OmegaConf

    cfg = md.get("config")
    if not isinstance(cfg, dict) or "model" not in cfg or "data" not in cfg:
        raise FormatError(path, "the anemoi metadata has no resolved training config",
                          "convert the checkpoint with a recent anemoi-ckpt")
    return OmegaConf.create(cfg)


def _n_steps(config: Any, md: dict[str, Any], path: str) -> tuple[int, int]:
    for section in ("task", "training"):
        sec = config.get(section) or {}
        if sec.get("multistep_input") is not None:
            return int(sec.get("multistep_input")), int(sec.get("multistep_output") or 1)
    ts = ((md.get("metadata_inference") or {}).get("data") or {}).get("timesteps") or {}
    if ts.get("input_relative_date_indices"):
        return len(ts["input_relative_date_indices"]), len(ts.get("output_relative_date_indices") or [1])
    raise FormatError(path, "cannot tell the number of input steps from the config")


def _data_indices(config: Any, md: dict[str, Any], path: str) -> dict[str, Any]:
    """``IndexCollection(data_config, name_to_index)`` per dataset, as anemoi-training builds them."""
    from anemoi.models.data_indices.collection import IndexCollection
    from anemoi.models.utils.config import get_multiple_datasets_config

    data_config = get_multiple_datasets_config(config.data)
    indices = (md.get("data_indices") or {})
    out = {}
    for name in data_config:
        try:
            name_to_index = indices[name]["data"]["input"]["name_to_index"]
        except (KeyError, TypeError):
            raise FormatError(path, f"no data_indices.{name}.data.input.name_to_index in the anemoi "
                              "metadata") from None
        out[name] = IndexCollection(data_config[name], name_to_index)
        # the collection must agree with the one recorded at training time
        recorded = indices[name]
        mine = out[name].todict() if hasattr(out[name], "todict") else None
        if mine is not None and _plain(mine) != _plain(recorded):
            raise FormatError(path, f"data indices of dataset {name!r} rebuilt by the installed "
                              "anemoi-models differ from the recorded ones")
    return out


def _plain(obj: Any) -> Any:
    """JSON-like comparison form (tensors and tuples to lists)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def _statistics(data_indices: dict[str, Any]) -> dict[str, dict[str, Any]]:
    import numpy as np

    stats = {}
    for name, idx in data_indices.items():
        n = len(idx.name_to_index)
        stats[name] = {"mean": np.zeros(n), "stdev": np.ones(n),
                       "minimum": np.zeros(n), "maximum": np.ones(n)}
    return stats


def load_model(path: str | os.PathLike, device: Any = "cpu") -> Any:
    """A working ``AnemoiModelInterface`` (eval mode) built from the ``.anc`` at ``path`` with the
    installed anemoi-models: weights loaded strictly, non-persistent buffers set from the file."""
    _require_anemoi()  # the install hint before any file error
    from ..reader import open_checkpoint

    with open_checkpoint(os.fspath(path)) as ck:
        return load_from_checkpoint(ck, device)


def load_from_checkpoint(ck: Any, device: Any = "cpu") -> Any:
    """:func:`load_model` of an already open :class:`~anemoi_ckpt.reader.Checkpoint` (a path or a
    URL: a remote file's weights are fetched once, here). The file stays the caller's to close."""
    _require_anemoi()
    from anemoi.models.interface import AnemoiModelInterface

    path = ck.path
    md = ck.anemoi_metadata
    if not md:
        raise FormatError(path, "no anemoi metadata: not an anemoi checkpoint")
    installed = _installed_version()
    steps = load_steps()  # parsed once per load, shared by every use below
    hint = mismatch_hint(md, installed, steps)
    try:
        config = _config(md, path)
        n_in, n_out = _n_steps(config, md, path)
        data_indices = _data_indices(config, md, path)
    except FormatError as e:  # metadata no step brought forward: say which anemoi wrote it
        raise FormatError(path, e.what, e.hint or hint, section=e.section) from None
    sections = ck.tensor_sections()
    found = {}
    for name in ("weights", "buffers"):
        if name in sections:
            ck.read_ahead(name)  # every byte is used: readahead, not fault-at-a-time paging
            found[name] = ck.tensors(name)
    tensors, applied = to_installed(found, md, installed, path, steps)
    if applied:
        LOG.info("%s: layout brought to anemoi-models %s by %s", path, installed, ", ".join(applied))
    weights, buffers = tensors["weights"], tensors.get("buffers", {})
    if "graph" in sections:
        graph = graph_from_section(ck)
    elif buffers:
        graph = graph_from_buffers(buffers, config, weights, path)
    else:
        raise FormatError(path, "neither a graph nor a buffers section: cannot build the graph")
    supporting = {k: copy.deepcopy(v) for k, v in ck.supporting_arrays.items()}
    try:
        with _skip_init():
            model = AnemoiModelInterface(
                config=config,
                n_step_input=n_in,
                n_step_output=n_out,
                graph_data=graph,
                statistics=_statistics(data_indices),
                data_indices=data_indices,
                metadata=copy.deepcopy(md),
                supporting_arrays=supporting,
            )
    except Exception as e:  # hydra/omegaconf/TypeError from a config no step brought forward
        raise FormatError(path, f"the model config does not build with the installed "
                          f"anemoi-models {installed}: {_config_problem(e)}", hint) from None
    weights, buffers, fixed = run_load_ops(
        model, weights, buffers, steps_up_to(installed, steps, load_ops=True))
    if fixed:
        LOG.info("%s: brought to anemoi-models %s at load by %s", path, installed, ", ".join(fixed))
    _load_weights(model, weights, path, hint)
    if buffers:
        # with the file's own graph the module tree derived every buffer from it: the file's
        # buffers (an old persistent edge_inc moved by refactor_mapper) replace only their own
        _set_buffers(model, buffers, path, hint, complete="graph" not in sections)
    del weights, buffers, tensors, found  # the views they held are the model's or the reader's now
    track_file_pages(model, ck)
    model.eval()
    return model.to(device)


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
                   "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                   "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Construct without random initialisation: ``torch.nn.init`` fills become no-ops.

    Every parameter and persistent buffer is then overwritten by the strict load (a missing name is
    an error), so the fills are wasted work: at AIFS size they take longer than reading the
    weights. Buffers derived from the graph are computed, not filled, so they are unaffected. The
    patch is process-wide for the duration of the ``with`` (as Hugging Face's ``no_init_weights``),
    and always undone."""
    import torch.nn.init as init

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}

    def keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    try:
        for name in saved:
            setattr(init, name, keep)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def _load_weights(model: Any, weights: Any, path: str, hint: str) -> None:
    """Strict load. Tensors whose dtype matches the module's are assigned, not copied: they stay
    views of the file's copy-on-write map (``ACCESS_COPY``), so a ready model costs no copy of
    its weights, pages are read on first use, and an in-place update writes a private copy of the
    page, never the file."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise FormatError(path, "the weights do not fit the module tree built by the installed "
                          f"anemoi-models: {_key_report(missing, unexpected)}", hint)
    state = {}
    for name, mine in own.items():
        t = weights[name]
        if tuple(t.shape) != tuple(mine.shape):
            raise FormatError(path, f"tensor {name}: shape {tuple(t.shape)} in the file, "
                              f"{tuple(mine.shape)} in the module tree built by the installed "
                              "anemoi-models", hint)
        state[name] = t if t.dtype == mine.dtype else t.to(mine.dtype)
    model.load_state_dict(state, strict=True, assign=True)


def _config_problem(e: BaseException) -> str:
    """The innermost cause of a failed build, on one line (hydra wraps it, omegaconf appends the
    full key on later lines)."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = str(e).strip()
    key = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.strip().startswith("full_key:")), None)
    first = text.splitlines()[0] if text else type(e).__name__
    return f"{first} (config key {key})" if key else first


def _key_report(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing from the file (first: {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model (first: {', '.join(unexpected[:3])})")
    return "; ".join(parts)


def _installed_version() -> Version:
    import anemoi.models

    try:
        return Version(getattr(anemoi.models, "__version__", "0"))
    except InvalidVersion:  # a source checkout without a version: assume the newest layout
        return Version("9999")


def _set_buffers(model: Any, buffers: Any, path: str, hint: str, complete: bool = True) -> None:
    """Set the non-persistent buffers from the file's. ``complete``: the file must hold every one
    (an inference file built from a stand-in graph); otherwise the built ones it lacks stay."""
    persistent = set(model.state_dict())
    expected = {n for n, _ in model.named_buffers() if n not in persistent}
    missing, unexpected = sorted(expected - set(buffers)) if complete else [], sorted(set(buffers) - expected)
    if missing or unexpected:
        raise FormatError(path, f"non-persistent buffers do not match the installed anemoi-models "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})", hint, section="buffers")
    for name, tensor in buffers.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        # a view of the copy-on-write map, like the weights (see _load_weights)
        owner._buffers[leaf] = tensor
