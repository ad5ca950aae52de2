"""``split``: a fine-tune minus its base, as a PEFT LoRA adapter (or a freeze delta) in an ``.anc``.

Tensors are compared by the manifests' per-tensor sha256 first: an unchanged tensor is never read
and is left out. Each changed tensor is stored one of four ways, chosen so that PEFT 0.21 loads
the adapter and reproduces the fine-tune (scale exactly 1 everywhere):

- **LoRA**: a changed 2-D float tensor matching ``targets`` (default: every 2-D float
  ``*.weight``) becomes ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``
  (truncated SVD of ``finetuned - base`` in fp32, :mod:`.svd`);
- **lora_bias**: the changed bias of a factorised module becomes ``lora_B.bias`` (the delta),
  PEFT's ``lora_bias=True``, meant for adapters extracted from full fine-tunes. The flag is global,
  so every factorised module then carries a ``lora_B.bias`` (zeros where its bias did not change);
- **modules_to_save**: any other changed tensor marks its module; PEFT replaces a whole module, so
  the module's every tensor is stored under ``base_model.model.<name>`` exactly as
  ``save_pretrained`` writes them, and the module is listed in ``modules_to_save``. The outermost
  such module is listed (it holds its children);
- **delta section**: what PEFT cannot express (a tensor of the model root, or a non-bias tensor of
  a module that is also a LoRA target, or above one) is stored whole under its own name in the
  extra tensor section ``delta``, recorded as ``adapter.delta_section``; PEFT export drops it,
  and ``split`` warns.

``kind="delta"`` writes a freeze delta instead: every changed tensor whole under its own name.
"""

from __future__ import annotations

import fnmatch
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..container import sections as S
from ..errors import AncError, FormatError, UsageError
from ..output_path import check_output
from ..progress import Progress
from ..reader import Checkpoint, open_checkpoint
from ..container.schema import Metadata
from ..writer import Writer
from .svd import factorise

PREFIX = "base_model.model."
DELTA_SECTION = "delta"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class ModuleSplit:
    name: str  # module name (the tensor name without ".weight")
    shape: tuple[int, int]
    rank: int
    retained_energy: float
    rel_error: float
    delta_norm: float  # ||finetuned - base||_F, for the totals


@dataclass
class SplitReport:
    finetuned: str
    base: str
    out: str
    kind: str  # "lora" or "delta"
    modules: list[ModuleSplit] = field(default_factory=list)
    #: changed tensors stored whole: name -> "lora_bias", "modules_to_save", "delta" or "whole"
    whole: dict[str, str] = field(default_factory=dict)
    modules_to_save: list[str] = field(default_factory=list)
    unchanged: int = 0
    adapter_params: int = 0  # numbers stored in the output
    changed_params: int = 0  # numbers that differ-by-tensor in the fine-tune

    @property
    def max_rank(self) -> int:
        return max((m.rank for m in self.modules), default=0)

    @property
    def rel_error(self) -> float:
        """Frobenius error over all factorised modules together, relative to their deltas."""
        num = sum((m.rel_error * m.delta_norm) ** 2 for m in self.modules)
        den = sum(m.delta_norm ** 2 for m in self.modules)
        return math.sqrt(num / den) if den else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"finetuned": self.finetuned, "base": self.base, "out": self.out, "kind": self.kind,
                "modules": [asdict(m) | {"shape": list(m.shape)} for m in self.modules],
                "whole": self.whole, "modules_to_save": self.modules_to_save,
                "totals": {"modules": len(self.modules), "max_rank": self.max_rank,
                           "rel_error": self.rel_error, "whole": len(self.whole),
                           "unchanged": self.unchanged, "adapter_params": self.adapter_params,
                           "changed_params": self.changed_params}}


# --- planning (no tensor bytes) ------------------------------------------------------------------
def _module_of(name: str) -> tuple[str, str]:
    mod, _, param = name.rpartition(".")
    return mod, param


def is_target(name: str, dtype: torch.dtype, shape: Sequence[int], targets: Sequence[str] | None) -> bool:
    """Factorisable: a 2-D float tensor that is a module's ``weight`` (PEFT's lora_A/lora_B
    replace exactly that) and matches a ``targets`` glob, tried on the tensor and module names."""
    mod, param = _module_of(name)
    if len(shape) != 2 or dtype not in _FLOATS or param != "weight" or not mod:
        return False
    if targets is None:
        return True
    return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(mod, g) for g in targets)


def _under(name: str, mod: str) -> bool:
    return name == mod or name.startswith(mod + ".")


def plan_whole(changed: Sequence[str], lora_modules: set[str], all_names: Sequence[str]
               ) -> tuple[dict[str, str], list[str], bool]:
    """How each changed, unfactorised tensor is stored: ``{name: how}``, the modules_to_save list
    and whether ``lora_bias`` is needed."""
    how: dict[str, str] = {}
    candidates: set[str] = set()
    for name in changed:
        mod, param = _module_of(name)
        if mod in lora_modules and param == "bias":
            how[name] = "lora_bias"
        elif not mod or any(_under(lm, mod) for lm in lora_modules):
            how[name] = "delta"  # PEFT cannot wrap the root, nor a module holding a LoRA target
        else:
            candidates.add(mod)
    # outermost modules only: wrapping a module wraps its children
    mts = sorted(m for m in candidates if not any(o != m and _under(m, o) for o in candidates))
    for name in all_names:  # PEFT stores the module's every tensor, changed or not
        if any(_under(name, m) for m in mts):
            how[name] = "modules_to_save"
    return how, mts, any(v == "lora_bias" for v in how.values())


def peft_config(ranks: dict[str, int], modules_to_save: list[str], lora_bias: bool) -> dict[str, Any]:
    """adapter_config.json with scale 1 for every module: ``r = lora_alpha`` = the largest rank,
    and ``rank_pattern = alpha_pattern`` for modules of smaller rank (mergekit's recipe)."""
    r = max(ranks.values(), default=1)
    pattern = {m: k for m, k in ranks.items() if k != r}
    return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None,
            "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
            "use_rslora": False, "use_dora": False, "lora_dropout": 0.0, "bias": "none",
            "lora_bias": lora_bias, "fan_in_fan_out": False, "init_lora_weights": True,
            "target_modules": sorted(ranks), "modules_to_save": modules_to_save or None,
            "inference_mode": True}


# --- I/O ---------------------------------------------------------------------------------------
def _table(ck: Checkpoint) -> tuple[Any, dict[str, str]]:
    tensors = ck.tensors("weights")
    table = ck.section(S.tensor_section_path("weights")).tensors
    digests = dict(table.digests)
    digests.update({a: digests[t] for a, t in table.aliases.items()})
    return tensors, digests


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def default_out(finetuned: str, kind: str) -> str:
    stem = os.path.splitext(os.fspath(finetuned))[0]
    return f"{stem}-{'lora' if kind == 'lora' else 'delta'}.anc"


def _check_args(finetuned: str, base: str, out: str, kind: str, rank: int | None,
                energy: float | None) -> None:
    if kind not in ("lora", "delta"):
        raise UsageError(None, f"kind must be lora or delta, not {kind!r}")
    if kind == "lora" and (rank is None) == (energy is None):
        raise UsageError(None, "give exactly one of --rank or --energy for a LoRA split")
    if kind == "delta" and (rank is not None or energy is not None):
        raise UsageError(None, "--rank/--energy do not apply to a delta split")
    if rank is not None and rank < 1:
        raise UsageError(None, f"rank must be at least 1, not {rank}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise UsageError(None, f"energy must be in (0, 1], not {energy}")
    for src in (finetuned, base):
        if os.path.exists(out) and _same_file(out, src):
            raise UsageError(out, "the output is one of the inputs", "choose another -o")
    if os.path.exists(finetuned) and _same_file(finetuned, base):
        raise UsageError(finetuned, "the fine-tune and the base are the same file")


def _changed(ft: Checkpoint, base: Checkpoint) -> tuple[list[str], list[str], Any, Any]:
    """Changed names (digest, dtype or shape-free comparison: layouts must agree) and all names."""
    ft_t, ft_d = _table(ft)
    b_t, b_d = _table(base)
    for name in ft_t:
        if name not in b_t:
            raise FormatError(base.path, f"has no tensor {name!r}, which {ft.path} has",
                              "split needs the fine-tune's own base")
    for name in b_t:
        if name not in ft_t:
            raise FormatError(ft.path, f"has no tensor {name!r}, which {base.path} has",
                              "split needs the fine-tune's own base")
    changed = []
    for name in ft_t:
        fe, be = ft_t.entries[ft_t.aliases.get(name, name)], b_t.entries[b_t.aliases.get(name, name)]
        if tuple(fe.shape) != tuple(be.shape) or fe.dtype != be.dtype:
            raise FormatError(ft.path, f"tensor {name!r} is {fe.dtype}{list(fe.shape)}, "
                              f"{be.dtype}{list(be.shape)} in {base.path}",
                              "split needs the same layout and dtypes as the base")
        if ft_d[name] != b_d[name]:
            changed.append(name)
    return changed, list(ft_t), ft_t, b_t


def _descends_from(child: Checkpoint, ancestor: Checkpoint) -> bool:
    """Whether ``ancestor`` is in ``child``'s recorded history (by uuid or content id)."""
    try:
        records = child.lineage.records
    except AncError:  # no readable lineage: nothing to say
        return False
    for r in records[1:]:
        if r.uuid == ancestor.uuid or r.content_id == ancestor.content_id:
            return True
    return any(p.uuid == ancestor.uuid for p in records[0].parents)


def _check_not_swapped(ft: Checkpoint, bs: Checkpoint) -> None:
    """FILE is the fine-tune and --base its base: a --base made from FILE means the two are
    swapped, and the split would silently write the inverse adapter (base - fine-tune)."""
    if _descends_from(bs, ft):
        raise UsageError(None, f"--base {bs.path} was made from FILE {ft.path}: FILE and --base are swapped",
                         f"give the fine-tune as FILE and its base as --base: "
                         f"split {bs.path} --base {ft.path}")


def split(finetuned: str | os.PathLike, base: str | os.PathLike, out: str | os.PathLike | None = None,
          *, rank: int | None = None, energy: float | None = None,
          targets: Sequence[str] | None = None, kind: str = "lora", randomized: bool | None = None,
          seed: int = 0, durable: bool = True, progress: bool | None = None,
          on_module: Callable[[ModuleSplit], None] | None = None, overwrite: bool = True) -> SplitReport:
    """Write ``finetuned - base`` to ``out`` as an adapter (``kind="lora"``) or a freeze delta
    (``kind="delta"``); see the module docstring. ``randomized`` (default: when ``rank`` is given)
    uses a seeded randomized SVD. Nothing is written on error."""
    finetuned, base = os.fspath(finetuned), os.fspath(base)
    out = os.fspath(out) if out is not None else default_out(finetuned, kind)
    _check_args(finetuned, base, out, kind, rank, energy)
    check_output(out, overwrite=overwrite)
    if randomized is None:
        randomized = rank is not None
    if randomized and rank is None:
        raise UsageError(None, "randomized SVD needs --rank, not --energy")
    targets = list(targets) if targets else None
    with open_checkpoint(finetuned) as ft, open_checkpoint(base) as bs:
        _check_not_swapped(ft, bs)
        changed, names, ft_t, b_t = _changed(ft, bs)
        if not changed:
            raise UsageError(finetuned, f"every tensor equals the base's ({base})", "nothing to split")
        report = SplitReport(finetuned, base, out, kind, unchanged=len(names) - len(changed))
        report.changed_params = sum(ft_t[n].numel() for n in changed)
        info = {"name": os.path.splitext(os.path.basename(out))[0], "base_content_id": bs.content_id,
                "base_uuid": bs.uuid}
        params = {"rank": rank, "energy": energy, "targets": targets, "randomized": randomized}
        total = sum(ft_t[n].numel() * ft_t[n].element_size() for n in changed)
        with Progress.for_bytes(total, f"splitting {os.path.basename(finetuned)}", progress) as bar, \
                Writer(out, kind="adapter" if kind == "lora" else "delta", parents=[ft, bs],
                       operation="split", parameters=params, durable=durable) as w:

            def add(name: str, t: torch.Tensor, section: str = "weights") -> None:
                w.add(name, t, section=section)
                report.adapter_params += t.numel()

            if kind == "delta":
                for n in changed:
                    add(n, ft_t[n])
                    report.whole[n] = "whole"
                    bar.update(ft_t[n].numel() * ft_t[n].element_size())
                _set_metadata(w, {"adapter": info})
                return report
            lora = [n for n in changed if is_target(n, ft_t[n].dtype, ft_t[n].shape, targets)]
            if not lora:  # PEFT refuses a LoRA config that targets no module
                raise UsageError(finetuned, "no changed tensor can be factorised (none is a 2-D "
                                 "float weight matching the targets)", "write a freeze delta with --delta")
            lora_modules = {_module_of(n)[0] for n in lora}
            how, mts, lora_bias = plan_whole([n for n in changed if n not in set(lora)],
                                             lora_modules, names)
            ranks: dict[str, int] = {}
            for n in lora:
                mod = _module_of(n)[0]
                delta = ft_t[n].float() - b_t[n].float()
                f = factorise(delta, rank=rank, energy=energy, randomized=randomized, seed=seed)
                ms = ModuleSplit(mod, (delta.shape[0], delta.shape[1]), f.rank, f.retained_energy,
                                 f.rel_error, float(torch.linalg.vector_norm(delta)))
                del delta
                bar.update(ft_t[n].numel() * ft_t[n].element_size())
                report.modules.append(ms)
                if on_module is not None:
                    on_module(ms)
                if f.rank == 0:
                    continue  # bytes differ, values do not (e.g. -0.0 vs 0.0): nothing to store
                ranks[mod] = f.rank
                add(f"{PREFIX}{mod}.lora_A.weight", f.A)
                add(f"{PREFIX}{mod}.lora_B.weight", f.B)
                if lora_bias:  # global in PEFT: every LoRA module needs one, zeros if unchanged
                    bias = f"{mod}.bias"
                    db = (ft_t[bias].float() - b_t[bias].float() if bias in ft_t
                          else torch.zeros(f.B.shape[0]))
                    add(f"{PREFIX}{mod}.lora_B.bias", db)
            for n, h in how.items():
                if h == "modules_to_save":
                    add(f"{PREFIX}{n}", ft_t[n])
            delta_names = [n for n, h in how.items() if h == "delta"]
            for n in delta_names:
                add(n, ft_t[n], section=DELTA_SECTION)
            changed_set = set(changed)
            report.whole = {n: h for n, h in how.items() if n in changed_set}
            report.modules_to_save = mts
            if not ranks:
                raise UsageError(finetuned, "every factorisable tensor differs from the base only "
                                 "in its bytes, not its values", "write a freeze delta with --delta")
            if delta_names:
                info["delta_section"] = DELTA_SECTION
                warnings.warn(f"{len(delta_names)} changed tensor(s) PEFT cannot express (e.g. "
                              f"{delta_names[0]!r}) are kept whole in section {DELTA_SECTION!r}; "
                              "a PEFT export drops them", stacklevel=2)
            _set_metadata(w, {"adapter": info, "peft_config": peft_config(ranks, mts, lora_bias)})
    return report


def _set_metadata(w: Writer, extra: dict[str, Any]) -> None:
    """Metadata known only once the tensors are written (ranks, modules); written at close."""
    w.metadata = Metadata.model_validate({**w.metadata.model_dump(mode="json"), **extra})


def split_attached(path: str | os.PathLike, out_dir: str | os.PathLike, *,
                   durable: bool = True, overwrite: bool = True) -> list[str]:
    """Write every adapter attached to ``path`` as its own kind-``adapter`` ``.anc``
    (``<out_dir>/<name>.anc``, tensors and config verbatim, no SVD); returns the paths."""
    from .model import read_adapters

    path, out_dir = os.fspath(path), os.fspath(out_dir)
    with open_checkpoint(path) as ck:
        attached = [a for a in read_adapters(ck) if "section" in a.extra]
        if not attached:
            raise UsageError(path, "has no attached adapters", "attach some with "
                             "'anemoi-ckpt adapters attach', or split a fine-tune with --base")
        outs = []
        for a in attached:
            # the name comes from the file: it must not steer the output elsewhere
            if not a.name or a.name.startswith(".") or not S.valid_section_name(a.name.replace(".", "_")):
                raise FormatError(path, f"attached adapter name {a.name!r} is not a safe file name")
            outs.append(os.path.join(out_dir, f"{a.name}.anc"))
        for o in outs:
            if os.path.exists(o) and _same_file(o, path):
                raise UsageError(o, "the output is the input", "choose another -o")
        check_output(out_dir, overwrite=overwrite, kind="dir")
        os.makedirs(out_dir, exist_ok=True)
        for o in outs:  # every output before the first is written
            check_output(o, overwrite=overwrite)
        for a, o in zip(attached, outs):
            info = {"name": a.name, "base_content_id": a.base_content_id, "base_uuid": a.base_uuid}
            with Writer(o, kind="adapter", parents=[ck], operation="split",
                        parameters={"attached": a.name}, durable=durable,
                        metadata={"adapter": info, "peft_config": a.config}) as w:
                w.add_section("weights", dict(a.tensors.items()))
    return outs
