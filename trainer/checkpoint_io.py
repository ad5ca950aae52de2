"""A Lightning ``CheckpointIO`` that writes and reads training ``.anc`` files (kind ``training``).

Layout (the conventions of :mod:`anemoi_ckpt.convert.lightning`, so ``convert``, ``diff`` and
``lineage`` read these files like converted anemoi-training checkpoints):

- ``weights``: the model's state dict under its own names (the LightningModule's ``model.``
  prefix removed). For ``lora`` that is the *PEFT-wrapped* model's state - base weights under
  ``base_model.model.<module>.base_layer.weight``, LoRA tensors under ``...lora_A.default.weight``
  - exactly what the optimizer trains and what resuming needs; the adapter file is written apart;
- ``module``: any other LightningModule state (none for :class:`WeatherModule`);
- ``optimizer`` (``optimizer-<k>`` for further optimizers): state tensors named
  ``<parameter name>.<state key>``; their param groups (parameters by name) in the document;
- ``state``: every other tensor (the torch RNG state, tensors inside callbacks or loops);
- document ``training-state``: the rest of Lightning's checkpoint as JSON - epoch, global step,
  loops (with the batch loader's position), callbacks, lr schedulers, RNG states, optimizers.
  A tensor there is ``{"__tensor__": "<section>/<name>"}``; tuples, non-string keys and
  non-finite floats have their own small markers, so every value comes back as it was saved.

Loading re-keys the optimizer state by the *current* trainable parameters (``names()``): a
parameter without state in the file starts fresh, one in the file that no longer trains is
dropped, and both lists are kept in :attr:`AncCheckpointIO.last_load` (and warned about).

Writing is one atomic rename (:class:`anemoi_ckpt.writer.Writer`). Lightning's strategies call
``save_checkpoint`` on global rank 0 only, with a gathered full state for FSDP (whose optimizer
state is keyed by parameter name already: string keys are taken as names).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO

from ..errors import FormatError
from ..reader import open_checkpoint
from ..writer import Writer

PREFIX = "model."
#: Lightning keys stored in their own sections rather than in the document.
_OWN = ("state_dict", "optimizer_states")


# --- JSON codec for Lightning's checkpoint dict --------------------------------------------------
class _Encoder:
    def __init__(self, section: str = "state") -> None:
        self.section = section
        self.tensors: dict[str, torch.Tensor] = {}

    def tensor(self, name: str, t: torch.Tensor, section: str | None = None) -> dict[str, str]:
        section = section or self.section
        self.tensors[name] = t.detach().cpu().contiguous()
        return {"__tensor__": f"{section}/{name}"}

    def __call__(self, obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            return self.tensor(path, obj)
        if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if hasattr(obj, "item") and type(obj).__module__ == "numpy" and getattr(obj, "ndim", 1) == 0:
            return self(obj.item(), path)
        if type(obj).__module__ == "numpy":  # an array: kept as a tensor, numpy on the way back
            return {"__numpy__": self.tensor(path, torch.from_numpy(obj.copy()))}
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) for k in obj):
                return {k: self(v, f"{path}.{k}") for k, v in obj.items()}
            return {"__items__": [[self(k, f"{path}.key{i}"), self(v, f"{path}.{k}")]
                                  for i, (k, v) in enumerate(obj.items())]}
        if isinstance(obj, tuple):
            return {"__tuple__": [self(v, f"{path}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self(v, f"{path}.{i}") for i, v in enumerate(obj)]
        raise TypeError(f"cannot store a {type(obj).__name__} at {path!r} in a training .anc")


def _decode(obj: Any, tensors: Callable[[str], torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (key, value), = obj.items()
        if key == "__tensor__":
            return tensors(value)
        if key == "__float__":
            return float(value)
        if key == "__numpy__":
            return _decode(value, tensors).numpy()
        if key == "__tuple__":
            return tuple(_decode(v, tensors) for v in value)
        if key == "__items__":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _strip(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


# --- the plugin --------------------------------------------------------------------------------
class AncCheckpointIO(CheckpointIO):
    """``names``: the trainable parameter names in optimizer order (the module's
    ``trainable_names``); ``metadata``/``parents``/``parameters``: what every training file
    written carries (model spec, base identity, config)."""

    def __init__(self, names: Callable[[], list[str]], *, metadata: Mapping[str, Any] | None = None,
                 parents: list[Any] | None = None, operation: str = "train",
                 parameters: Mapping[str, Any] | None = None, durable: bool = True) -> None:
        self.names = names
        self.metadata = dict(metadata or {})
        self.parents = list(parents or [])
        self.operation = operation
        self.parameters = dict(parameters or {})
        self.durable = durable
        self.last_load: dict[str, list[str]] = {}
        self.written: list[str] = []

    # --- save --------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AncCheckpointIO takes no storage_options")
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        sd = checkpoint.get("state_dict") or {}
        weights = {_strip(n): t for n, t in sd.items() if n.startswith(PREFIX)}
        module = {n: t for n, t in sd.items() if not n.startswith(PREFIX)}
        enc = _Encoder("state")
        sections: dict[str, dict[str, torch.Tensor]] = {}
        optimizers = []
        for k, osd in enumerate(checkpoint.get("optimizer_states") or []):
            section = "optimizer" if k == 0 else f"optimizer-{k}"
            o_enc = _Encoder(section)
            optimizers.append(self._optimizer_doc(osd, o_enc, section, enc))
            sections[section] = o_enc.tensors
        doc = {k: enc(v, k) for k, v in checkpoint.items() if k not in _OWN}
        doc["optimizers"] = optimizers
        params = {**self.parameters, "global_step": checkpoint.get("global_step"),
                  "epoch": checkpoint.get("epoch")}
        with Writer(path, kind="training", metadata=self.metadata, parents=self.parents,
                    operation=self.operation, parameters=params, durable=self.durable) as w:
            w.add_section("weights", weights)
            for name, tensors in (("module", module), *sections.items(), ("state", enc.tensors)):
                if tensors:
                    w.add_section(name, tensors)
            w.add_document("training-state", doc)
        self.written.append(path)

    def _optimizer_doc(self, osd: Mapping[str, Any], o_enc: _Encoder, section: str,
                       enc: _Encoder) -> dict[str, Any]:
        """Positional optimizer state -> state named by parameter (the module's order is the
        optimizer's order: exact, no guessing from shapes as a converted file needs)."""
        groups = osd.get("param_groups") or []
        indices = [i for g in groups for i in g.get("params", [])]
        if indices and all(isinstance(i, int) for i in indices):
            current = self.names()
            if len(current) != len(indices):
                raise RuntimeError(f"the optimizer holds {len(indices)} parameters, the module "
                                   f"trains {len(current)}: cannot name its state")
            label = {i: current[pos] for pos, i in enumerate(indices)}
        else:  # FSDP's full optimizer state: keyed by (prefixed) parameter name already
            label = {i: _strip(str(i)) for i in indices}
        state: dict[str, Any] = {}
        for i, entry in (osd.get("state") or {}).items():
            pname = label.get(i, _strip(str(i)))
            state[pname] = {str(key): (o_enc.tensor(f"{pname}.{key}", v) if isinstance(v, torch.Tensor)
                                       else enc(v, f"{section}.{pname}.{key}"))
                            for key, v in entry.items()}
        out_groups = []
        for g in groups:
            g2 = {k: enc(v, f"{section}.param_groups.{k}") for k, v in g.items() if k != "params"}
            g2["params"] = [label[i] for i in g.get("params", [])]
            out_groups.append(g2)
        rest = {k: enc(v, f"{section}.{k}") for k, v in osd.items() if k not in ("state", "param_groups")}
        return {"section": section, "names": "by-parameter", "state": state,
                "param_groups": out_groups, **rest}

    # --- load --------------------------------------------------------------------------------
    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        path = os.fspath(path)
        with open_checkpoint(path) as ck:
            if ck.kind != "training":
                raise FormatError(path, f"is a {ck.kind} file, not a training .anc", "resume from a "
                                  "training file written by 'anemoi-ckpt finetune' or 'pretrain'")
            if "training-state" not in ck.documents():
                raise FormatError(path, "has no training-state document")
            cache: dict[str, Any] = {}

            def tensor(ref: str) -> torch.Tensor:
                section, _, name = ref.partition("/")
                if section not in cache:
                    cache[section] = ck.tensors(section)
                return cache[section][name].clone()  # own memory: the file is closed after this

            doc = _decode(ck.document("training-state"), tensor)
            checkpoint = {k: v for k, v in doc.items() if k != "optimizers"}
            sd = {PREFIX + n: t.clone() for n, t in ck.tensors("weights").items()}
            if "module" in ck.tensor_sections():
                sd.update({n: t.clone() for n, t in ck.tensors("module").items()})
            checkpoint["state_dict"] = sd
            checkpoint["optimizer_states"] = [self._rekey(o, path) for o in doc.get("optimizers", [])]
        return checkpoint

    def _rekey(self, odoc: dict[str, Any], path: str) -> dict[str, Any]:
        """Named optimizer state -> positional, in the order of the parameters trained now."""
        current = self.names()
        pos = {n: i for i, n in enumerate(current)}
        saved = [n for g in odoc.get("param_groups", []) for n in g.get("params", [])]
        groups = odoc.get("param_groups") or [{}]
        if len(groups) != 1:
            raise FormatError(path, f"{len(groups)} optimizer parameter groups; this trainer uses one")
        group = {k: v for k, v in groups[0].items() if k != "params"}
        group["params"] = list(range(len(current)))
        state = {pos[n]: entry for n, entry in odoc.get("state", {}).items() if n in pos}
        fresh = [n for n in current if n not in odoc.get("state", {})]
        dropped = [n for n in saved if n not in pos]
        self.last_load = {"fresh": fresh, "dropped": dropped}
        if dropped:
            warnings.warn(f"{path}: dropped the optimizer state of {len(dropped)} parameter(s) no "
                          f"longer trained: {', '.join(dropped[:5])}{', ...' if len(dropped) > 5 else ''}",
                          stacklevel=2)
        if fresh and saved:
            warnings.warn(f"{path}: {len(fresh)} parameter(s) start with fresh optimizer state: "
                          f"{', '.join(fresh[:5])}{', ...' if len(fresh) > 5 else ''}", stacklevel=2)
        rest = {k: v for k, v in odoc.items() if k not in ("section", "names", "state", "param_groups")}
        return {"state": state, "param_groups": [group], **rest}

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
