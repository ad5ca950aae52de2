"""Lightning's checkpoint dict, rebuilt from a training ``.anc`` converted from anemoi-training's
``last.ckpt`` - what ``trainer.fit(ckpt_path=...)`` needs to continue the run, read without
unpickling.

The layout is :mod:`anemoi_ckpt.convert.lightning`'s (``anemoi-ckpt convert last.ckpt`` and
:class:`~anemoi_ckpt.anemoi.training.AncCheckpoint` write it):

- ``state_dict``: ``model.`` + the ``weights`` section, plus the ``module`` section (a
  weight-averaged run: the averaged ``weights-ema`` as ``state_dict``, the live weights as
  ``current_model_state``, as Lightning's ``WeightAveraging`` saves them);
- ``optimizer_states``: the named optimizer state put back in the positions of the parameters
  the module trains *now* (``requires_grad``, in ``parameters()`` order: anemoi-training's
  ``configure_optimizers``), so a file written by another process - or with parameters in
  another order - resumes each parameter's own moments;
- the rest (epoch, global step, loops, callbacks, lr schedulers, the datamodule's state, anemoi's
  ``task_state``) from the ``training-state`` document, its tensors from the ``state`` section
  (not anemoi-models' ``migrations`` registry, which every save writes afresh);
- ``hyper_parameters``: only what anemoi-training's ``on_load_checkpoint`` reads - each
  dataset's ``name_to_index`` (from the file's ``hyper-parameters`` document) and the anemoi
  metadata - since Lightning does not restore hyper-parameters when it resumes a fit.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import torch

from ...errors import FormatError
from ...reader import open_checkpoint

PREFIX = "model."
_NOT_RESTORED = ("optimizers", "migrations")


def decode_plain(doc: Any, tensor: Callable[[str], torch.Tensor], label: str) -> Any:
    """The JSON :func:`anemoi_ckpt.legacy.plain.to_plain` wrote, back as Python data: tensors
    fetched by reference, ``__ref__`` resolved to what was written at that path first. An
    object (``__class__``) cannot come back without its code: refused, naming where it is."""
    seen: dict[str, Any] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, list):
            out_list: list[Any] = []
            seen.setdefault(path or ".", out_list)
            out_list.extend(walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj))
            return out_list
        if not isinstance(obj, dict):
            return obj
        if len(obj) == 1:
            (key, value), = obj.items()
            if key == "__tensor__":
                return tensor(value)
            if key == "__ref__":
                if value not in seen:
                    raise FormatError(label, f"training-state refers to {value!r}, which it does not hold")
                return seen[value]
            if key == "__float__":
                return float(value)
            if key == "__int__":
                return int(value, 16)
            if key == "__bytes__":
                return base64.b64decode(value)
            if key == "__set__":
                return set(walk(value, path))
            if key == "__complex__":
                return complex(*walk(value, path))
            if key == "__items__":
                return {_hashable(walk(k, path)): walk(v, path) for k, v in value}
        if "__class__" in obj:
            raise FormatError(label, f"training-state holds a {obj['__class__']} object at "
                              f"{path or '.'!r}", "it cannot be rebuilt without unpickling; resume "
                              "from the run's last.ckpt")
        out: dict[str, Any] = {}
        seen.setdefault(path or ".", out)
        out.update({k: walk(v, f"{path}.{k}" if path else k) for k, v in obj.items()})
        return out

    return walk(doc, "")


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def trained_names(module: torch.nn.Module) -> list[str]:
    """The names of ``module``'s trainable parameters in optimizer order, as the ``.anc`` names
    them (the LightningModule's ``model.`` prefix removed)."""
    return [n[len(PREFIX):] if n.startswith(PREFIX) else n
            for n, p in module.named_parameters() if p.requires_grad]


def optimizer_state(odoc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                    current: list[str], decode: Callable[[Any], Any], label: str) -> dict[str, Any]:
    """One optimizer's ``state_dict`` for the parameters trained now, from its named form."""
    groups = odoc.get("param_groups") or []
    if len(groups) != 1:
        raise FormatError(label, f"{len(groups)} optimizer parameter groups; anemoi-training builds one")
    saved = list(groups[0].get("params") or [])
    positional = odoc.get("names") != "by-parameter"
    if positional and len(saved) != len(current):
        raise FormatError(label, f"the optimizer state is positional for {len(saved)} parameters, the "
                          f"model trains {len(current)}", "resume with the run's own configuration")
    # positional files keep the index as the name: the index is the position
    pos = {str(i): i for i in range(len(current))} if positional else {n: i for i, n in enumerate(current)}
    missing = [n for n in current if not positional and n not in saved]
    dropped = [n for n in saved if str(n) not in pos]
    if missing or dropped:
        raise FormatError(label, f"the optimizer state is for other parameters ({len(missing)} trained "
                          f"now lack state, e.g. {(missing or ['-'])[0]}; {len(dropped)} saved are not "
                          f"trained, e.g. {(dropped or ['-'])[0]})", "resume with the run's own "
                          "model and freezing settings, or warm start with weights only")
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        pname, _, key = name.rpartition(".")
        state.setdefault(pos[pname], {})[key] = t
    for pname, scalars in (odoc.get("scalar_state") or {}).items():
        state.setdefault(pos[str(pname)], {}).update(decode(scalars))
    group = {k: decode(v) for k, v in groups[0].items() if k != "params"}
    group["params"] = list(range(len(current)))
    rest = {k: decode(v) for k, v in odoc.items()
            if k not in ("section", "names", "state", "param_groups", "scalar_state")}
    return {"state": state, "param_groups": [group], **rest}


def _name_to_index(hparams: Mapping[str, Any]) -> dict[str, SimpleNamespace]:
    """Each dataset's ``IndexCollection`` as far as ``on_load_checkpoint`` reads it."""
    out = {}
    for name, coll in (hparams.get("data_indices") or {}).items():
        fields = coll.get("state", coll) if isinstance(coll, dict) else {}
        if isinstance(fields, dict) and isinstance(fields.get("name_to_index"), dict):
            out[name] = SimpleNamespace(name_to_index=dict(fields["name_to_index"]))
    return out


def lightning_checkpoint(path: str | os.PathLike, module: torch.nn.Module) -> dict[str, Any]:
    """The Lightning checkpoint dict of the training ``.anc`` at ``path``, its optimizer state
    positioned for ``module`` (the LightningModule being resumed)."""
    label = os.fspath(path)
    with open_checkpoint(label) as ck:
        if ck.kind != "training":
            raise FormatError(label, f"is a {ck.kind} file, not a training .anc",
                              "resume from the run's last.anc (an inference file only warm starts)")
        docs = ck.documents()
        if "training-state" not in docs:
            raise FormatError(label, "has no training-state document", "it was not converted from a "
                              "Lightning checkpoint; warm start from it instead")
        sections = ck.tensor_sections()
        cache: dict[str, dict[str, torch.Tensor]] = {}

        def section(name: str) -> dict[str, torch.Tensor]:
            if name not in cache:
                # own memory: the file is closed when this returns
                cache[name] = {k: t.clone() for k, t in ck.tensors(name).items()} if name in sections else {}
            return cache[name]

        def tensor(ref: str) -> torch.Tensor:
            sec, _, name = ref.partition("/")
            if name not in section(sec):
                raise FormatError(label, f"training-state refers to the missing tensor {ref!r}")
            return section(sec)[name]

        decode = lambda doc: decode_plain(doc, tensor, label)  # noqa: E731
        raw = ck.document("training-state")
        # "migrations": anemoi-models' registry of the migrations the saved file had; its
        # RegisterMigrations callback writes the current list into every new save, and nothing reads
        # it when a fit resumes - so its objects (MigrationMetadata) need not come back
        checkpoint = decode({k: v for k, v in raw.items() if k not in _NOT_RESTORED})
        module_state = section("module")
        live = {PREFIX + n: t for n, t in section("weights").items()} | module_state
        if "weights-ema" in sections:
            checkpoint["state_dict"] = {PREFIX + n: t for n, t in section("weights-ema").items()} | module_state
            checkpoint["current_model_state"] = live
        else:
            checkpoint["state_dict"] = live
        current = trained_names(module)
        checkpoint["optimizer_states"] = [
            optimizer_state(o, section(o.get("section", "optimizer")), current, decode, label)
            for o in raw.get("optimizers") or []]
        hparams = ck.document("hyper-parameters") if "hyper-parameters" in docs else {}
        checkpoint["hyper_parameters"] = {"data_indices": _name_to_index(hparams),
                                          "metadata": dict(ck.anemoi_metadata or {})}
    return checkpoint


__all__ = ["decode_plain", "lightning_checkpoint", "optimizer_state", "trained_names"]
