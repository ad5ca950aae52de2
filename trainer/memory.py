"""Less memory for fine-tuning: activation checkpointing and a bf16 frozen base (issue 17).

:func:`apply_memory` runs right after :func:`anemoi_ckpt.trainer.methods.apply_method`, on what it
returns (a PEFT ``PeftModel``, a model with frozen modules, or a fully trained model). Both parts
leave every state-dict name as it was: outputs, merges and resumes address tensors by name.

**bf16 frozen base** (``base_dtype="bf16"``). Every frozen floating parameter (``requires_grad``
False, not a LoRA/DoRA tensor) of a *leaf* module whose floating parameters are all frozen is cast
to bfloat16 in place (``param.data``: the same ``Parameter`` objects, so nothing holding them goes
stale); buffers are untouched and the trained parameters stay fp32. Each such module gets a pair of
forward hooks: floating inputs are cast to bf16 on the way in and its floating outputs back to the
input's dtype on the way out, so the module computes in bf16 against its bf16 weights and the rest
of the model sees fp32 activations. Under PEFT this keeps LoRA exact in fp32: ``lora.Linear``
calls its (hooked, bf16) ``base_layer`` and gets fp32 back, then runs ``lora_B(lora_A(x))`` on the
original fp32 ``x`` with fp32 A and B. Not cast, and reported in :attr:`MemoryPlan.kept_fp32`: a
frozen parameter of a module that also has trainable parameters or children (its forward mixes
them, so one dtype cannot be chosen for its inputs). ``full`` (nothing frozen) is refused.

Autocast is not used: it would also run LoRA's own matmuls in bf16.

A base built by the anemoi loader (``anemoi_ckpt.anemoi.load``) holds its weights as views of the
file's copy-on-write map: the cast does not free an fp32 weight, it only unreferences it, and its
pages, read once by the cast, would stay resident as long as the file is mapped. So every 64 MiB
cast, and at the end, the pages of file tensors that nothing uses any more are dropped
(``anemoi_ckpt.anemoi.pages.release_file_pages``, ``MADV_DONTNEED``; the file is never written), and the bf16 base is
all the base that stays resident (:attr:`MemoryPlan.file_pages_released`).

**Activation checkpointing** (``activation_checkpointing``). The model's own switch is set;
nothing is wrapped (wrappers would rename parameters):

- the reference model (``anemoi_ckpt.models.reference``): ``Processor.activation_checkpointing``,
  which runs each processor block under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``
  in training: only each block's input is kept, the block is recomputed in the backward pass;
- anemoi-models (0.19): the ``gradient_checkpointing`` attribute every ``BaseProcessor`` and
  ``BaseMapper`` reads at forward time (``anemoi.models.layers.utils.maybe_checkpoint``, non-
  reentrant ``torch.utils.checkpoint``). What that checkpoints: in the processor, each *chunk* of
  ``num_layers / num_chunks`` consecutive layers (``run_layer_chunk``; the processor's
  ``num_chunks`` sets the granularity); in a GraphTransformer mapper with ``shard_strategy: edges``
  the edge-sharding preparation and each of its ``num_chunks`` edge chunks, with ``heads`` the
  whole mapper forward; in GNN and Transformer mappers their mapper forward. The embeddings
  outside mappers and processor, and the model's pre/post-processing, are not checkpointed.
  anemoi-models builds these modules with checkpointing *on*, so ``False`` turns it off and
  ``None`` leaves each module as built.

A model with neither switch is refused when checkpointing is asked for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import ConfigError

#: Attribute on the trained model (a PeftModel forwards it to the base) holding the MemoryPlan.
PLAN_ATTR = "_anemoi_ckpt_memory_plan"
#: Substrings of PEFT's adapter tensor names (LoRA A/B, DoRA magnitude, embedding LoRA).
_ADAPTER_MARKERS = (".lora_", "lora_magnitude_vector")
#: The switches read at forward time: reference model, anemoi-models processors and mappers.
_REFERENCE_SWITCH = "activation_checkpointing"
_ANEMOI_SWITCH = "gradient_checkpointing"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: The anemoi loader's page releaser (its models' weights are views of their file's map); looked up in
#: sys.modules, so the trainer never imports anemoi itself.
_ANEMOI_LOADER = "anemoi_ckpt.anemoi.pages"
#: Cast this many fp32 bytes between two page releases: bounds the fp32 pages resident at once.
_RELEASE_EVERY = 64 << 20


@dataclass
class MemoryPlan:
    """What :func:`apply_memory` did: the names are the model's ``named_parameters`` /
    ``named_modules`` names."""

    base_dtype: str
    activation_checkpointing: bool | None
    cast: list[str] = field(default_factory=list)  # parameters now held in bf16
    kept_fp32: list[str] = field(default_factory=list)  # frozen, left fp32 (see module docstring)
    checkpointed: list[str] = field(default_factory=list)  # modules whose switch was set on
    cast_bytes_saved: int = 0
    file_pages_released: int = 0  # bytes of the base file's map dropped after the cast
    handles: list[Any] = field(default_factory=list, repr=False)

    def lineage(self) -> dict[str, Any]:
        """What a run's lineage records about how the base was held (see :func:`frozen_dtype_note`)."""
        out: dict[str, Any] = {"base_dtype": self.base_dtype,
                               "activation_checkpointing": self.activation_checkpointing}
        if self.cast:
            out["frozen_dtype"] = "bfloat16"
            out["frozen_tensors_bf16"] = len(self.cast)
            out["frozen_tensors_kept_fp32"] = len(self.kept_fp32)
            out["note"] = ("the frozen base weights were held and computed in bf16 during training; "
                           "the trained tensors are fp32 and outputs refer to the base's fp32 tensors")
        return out


def _is_adapter(name: str) -> bool:
    return any(m in name for m in _ADAPTER_MARKERS)


def _cast_tensors(obj: Any, dtype: torch.dtype) -> Any:
    """``obj`` with its floating tensors (top level, or inside one tuple/list) cast to ``dtype``."""
    if torch.is_tensor(obj):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast_tensors(o, dtype) if torch.is_tensor(o) else o for o in obj)
    return obj


def _first_float_dtype(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.dtype | None:
    for a in (*args, *kwargs.values()):
        if torch.is_tensor(a) and a.is_floating_point():
            return a.dtype
    return None


def _compute_in(module: nn.Module, dtype: torch.dtype) -> list[Any]:
    """Hooks making ``module`` run in ``dtype`` and hand back its caller's dtype. The caller's
    dtype is kept on a stack: activation checkpointing calls the forward again in the backward."""
    stack: list[torch.dtype | None] = []

    def pre(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        stack.append(_first_float_dtype(args, kwargs))
        return _cast_tensors(args, dtype), {k: _cast_tensors(v, dtype) for k, v in kwargs.items()}

    def post(_mod: nn.Module, _args: Any, _kwargs: Any, output: Any) -> Any:
        caller = stack.pop() if stack else None
        return output if caller is None or caller == dtype else _cast_tensors(output, caller)

    return [module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, with_kwargs=True)]


def _file_page_releaser(model: nn.Module) -> Callable[[], int] | None:
    """For a base built from an ``.anc`` by the anemoi loader (its weights views of the file's
    map): releases the pages of the file tensors nothing uses any more. The loader is looked up,
    not imported: a model it did not build has nothing to release."""
    loader = sys.modules.get(_ANEMOI_LOADER)
    release = getattr(loader, "release_file_pages", None)
    if release is None:
        return None
    base = _unwrap(model)
    return lambda: int(release(base))


def _hold_frozen_in(model: nn.Module, dtype: torch.dtype, plan: MemoryPlan, release_pages: bool) -> None:
    if not any(not p.requires_grad for p in model.parameters()):
        raise ConfigError(None, "base_dtype: bf16 needs frozen weights, and every parameter trains "
                          "(method full)", "use base_dtype: fp32 with method full")
    release = _file_page_releaser(model) if release_pages else None
    pending = 0  # fp32 bytes cast since the last release
    done: set[int] = set()  # a parameter shared by two modules is cast once
    for mod_name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.is_floating_point()]
        frozen = [(n, p) for n, p in own if not p.requires_grad and not _is_adapter(f"{mod_name}.{n}")]
        if not frozen:
            continue
        names = [f"{mod_name}.{n}" if mod_name else n for n, _ in frozen]
        leaf = next(module.children(), None) is None
        if not leaf or len(frozen) != len(own):
            plan.kept_fp32.extend(names)
            continue
        for name, (_, p) in zip(names, frozen):
            if id(p) not in done and p.dtype != dtype:
                plan.cast_bytes_saved += p.numel() * (p.element_size() - torch.empty((), dtype=dtype).element_size())
                pending += p.numel() * p.element_size()
                p.data = p.data.to(dtype)  # same Parameter; the fp32 storage is freed here
            done.add(id(p))
            plan.cast.append(name)
        plan.handles.extend(_compute_in(module, dtype))
        if release is not None and pending >= _RELEASE_EVERY:
            # a file-backed fp32 weight is not freed by the cast, only unreferenced: drop its
            # pages as the cast goes, or the whole fp32 base would be resident beside the bf16 one
            plan.file_pages_released += release()
            pending = 0
    if release is not None:
        plan.file_pages_released += release()


def _set_checkpointing(model: nn.Module, on: bool, plan: MemoryPlan) -> None:
    found = []
    for name, module in model.named_modules():
        for switch in (_REFERENCE_SWITCH, _ANEMOI_SWITCH):
            # own attributes only: PeftModel and LoraModel forward unknown attributes to the base
            if isinstance(vars(module).get(switch), bool):
                setattr(module, switch, on)
                found.append(name)
    if not found and on:
        raise ConfigError(None, f"activation_checkpointing: the model ({type(_unwrap(model)).__name__}) "
                          "has no checkpointing switch", "it works on the reference model and on "
                          "anemoi-models processors and mappers; set activation_checkpointing: false")
    plan.checkpointed = found if on else []


def _unwrap(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def apply_memory(model: nn.Module, *, activation_checkpointing: bool | None = None,
                 base_dtype: str = "fp32", release_file_pages: bool = True) -> MemoryPlan:
    """Apply both memory options to ``model`` in place and return what was done (also kept on the
    model, for :func:`frozen_dtype_note`). ``base_dtype``: ``"fp32"`` (nothing changes) or
    ``"bf16"``; ``activation_checkpointing``: True / False set the model's switch, None leaves it.
    ``release_file_pages``: with a bf16 base loaded from a file's map (the anemoi loader), drop the
    pages of the fp32 weights the cast replaced (see the module docstring)."""
    if base_dtype not in _DTYPES:
        raise ConfigError(None, f"base_dtype: {base_dtype!r} is not one of {', '.join(_DTYPES)}")
    plan = MemoryPlan(base_dtype, activation_checkpointing)
    if activation_checkpointing is not None:
        _set_checkpointing(model, activation_checkpointing, plan)
    if base_dtype != "fp32":
        if getattr(model, PLAN_ATTR, None) is not None and getattr(model, PLAN_ATTR).cast:
            raise ConfigError(None, "base_dtype: the model's frozen base is already held in "
                              f"{getattr(model, PLAN_ATTR).base_dtype}")
        _hold_frozen_in(model, _DTYPES[base_dtype], plan, release_file_pages)
    for holder in {id(model): model, id(_unwrap(model)): _unwrap(model)}.values():
        setattr(holder, PLAN_ATTR, plan)  # found from the PeftModel and from its base model
    return plan


def frozen_dtype_note(model: nn.Module) -> dict[str, Any] | None:
    """For the run's lineage: how :func:`apply_memory` held ``model``'s base, or None if it was
    not applied. Outputs compare and merge against the base file's fp32 tensors; this records
    that the training itself saw them rounded to bf16."""
    plan = getattr(model, PLAN_ATTR, None)
    return plan.lineage() if isinstance(plan, MemoryPlan) else None


def remove_memory_hooks(model: nn.Module) -> None:
    """Drop the bf16 compute hooks (the weights stay bf16): for a model about to be cast back,
    e.g. ``model.float()`` before an evaluation in fp32."""
    plan = getattr(model, PLAN_ATTR, None)
    if isinstance(plan, MemoryPlan):
        for h in plan.handles:
            h.remove()
        plan.handles.clear()


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Parameters registered inside land on the meta device (no memory; their init is a no-op
    there and draws nothing from the RNG); buffers stay real. With :func:`materialize`, a model is
    built without ever holding all of its fp32 weights: the build peak of a bf16 base."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def materialize(model: nn.Module, dtype_of: Callable[[str], torch.dtype]) -> int:
    """Give ``model``'s meta parameters real (CPU) storage, one module at a time, in
    ``named_modules`` order: allocate its own parameters in fp32, run its ``reset_parameters()``
    (the same init, drawn in the same RNG order, as an eager build), then cast each to
    ``dtype_of(name)``. Only one module's fp32 weights exist at a time. Returns the bytes held."""
    held = 0
    for mod_name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.device.type == "meta"]
        if not own:
            continue
        reset = getattr(module, "reset_parameters", None)
        if next(module.children(), None) is not None or not callable(reset):
            raise ConfigError(None, f"materialize: module {mod_name!r} ({type(module).__name__}) cannot be "
                              "initialised on its own", "build this model eagerly")
        for n, p in own:
            setattr(module, n, nn.Parameter(torch.empty(p.shape, dtype=torch.float32), requires_grad=p.requires_grad))
        reset()
        for n, _ in own:
            p = getattr(module, n)
            dtype = dtype_of(f"{mod_name}.{n}" if mod_name else n)
            if p.dtype != dtype:
                p.data = p.data.to(dtype)
            held += p.numel() * p.element_size()
    return held


__all__ = ["MemoryPlan", "apply_memory", "frozen_dtype_note", "materialize", "parameters_on_meta",
           "remove_memory_hooks"]
